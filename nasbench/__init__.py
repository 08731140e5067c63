"""nasbench: a workbench for neural architecture search and pruning.

The front door: CLI, configs, datasets, run store, benchmarks. Notebooks use `load_run`.
"""

from nasbench.runs import load_run

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]
