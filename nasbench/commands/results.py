"""`nasbench results [RUN]`: list runs, or show one run's manifest and tables."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nasbench.runs import list_runs, load_run


def command(
    run: str | None = typer.Argument(None, help="Run directory or name under --root."),
    root: Path = typer.Option(Path("results"), "--root", help="Where runs live."),
    rows: int = typer.Option(10, "--rows", help="Rows of each table to show."),
) -> None:
    """Without RUN, a table of runs; with RUN, its manifest and the head of each table."""
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        if run is None:
            table = list_runs(root)
            print(table.to_string(index=False) if not table.empty else f"no runs under {root}/")
            return
        opened = load_run(run, root=root)
        manifest = {k: v for k, v in opened.manifest.items() if k != "config"}
        print(f"run: {opened.path}")
        print(json.dumps(manifest, indent=2))
        for name in ["metrics", *opened.tables()]:
            frame = opened.metrics if name == "metrics" else opened.read_table(name)
            if not frame.empty:
                print(f"\n{name} ({len(frame)} rows)")
                print(frame.head(rows).to_string(index=False))
