"""A table of the runs under a results root, newest first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nasbench.config.sections import default_results_root
from nasbench.runs.store import MANIFEST, load_run


def list_runs(root: str | Path | None = None) -> pd.DataFrame:
    """One row per run under `root` (default `$NASBENCH_RESULTS`, else ./results)."""
    rows = []
    for manifest in sorted(Path(default_results_root() if root is None else root).glob(f"*/{MANIFEST}")):
        run = load_run(manifest.parent)
        rows.append({
            "run": run.name,
            "command": run.manifest.get("command"),
            "status": run.status,
            "started": run.manifest.get("started"),
            "ended": run.manifest.get("ended"),
            "tables": ",".join(run.tables()),
        })
    columns = ["run", "command", "status", "started", "ended", "tables"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("started", ascending=False, ignore_index=True) if rows else frame
