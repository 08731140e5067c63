"""Benchmarks (`nasbench bench NAME`): each compares against a named peer and writes JSON."""
