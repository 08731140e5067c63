"""Pruners: masks, global magnitude, lottery tickets, layer-adaptive DP, baselines."""
