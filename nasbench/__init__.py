"""nasbench: a workbench for neural architecture search and pruning.

The front door for notebooks and scripts: `train`, `search`, `prune`, `quickstart`,
`export`, `measure_latency`, `fit_latency` (each returns what it wrote) and `load_run`.
"""

from nasbench.api import (
    ExportResult,
    LatencyFit,
    export,
    fit_latency,
    measure_latency,
    prune,
    quickstart,
    search,
    train,
)
from nasbench.runs import Run, load_run

__version__ = "0.1.0"
__all__ = [
    "ExportResult",
    "LatencyFit",
    "Run",
    "__version__",
    "export",
    "fit_latency",
    "load_run",
    "measure_latency",
    "prune",
    "quickstart",
    "search",
    "train",
]
