"""The run store: one directory per command invocation, written atomically, resumable."""

from nasbench.runs.listing import list_runs
from nasbench.runs.store import Run, load_run, start_run

__all__ = ["Run", "list_runs", "load_run", "start_run"]
