"""The run store: one directory per command invocation, written atomically, resumable, and locked
while a process writes it."""

from nasbench.runs.listing import list_runs
from nasbench.runs.store import Run, RunLock, load_run, start_run

__all__ = ["Run", "RunLock", "list_runs", "load_run", "start_run"]
