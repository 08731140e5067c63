"""Tabular NAS benchmarks: the built-in one that ships, and adapters for published ones.

Each exposes a SearchSpace and objectives, so every optimizer runs on it unchanged.
"""

from nasbench.tabular.builtin import TabularBenchmark, load_builtin

__all__ = ["TabularBenchmark", "load_builtin"]
