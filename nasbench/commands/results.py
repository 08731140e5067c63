"""`nasbench results [RUN]`: list runs, or show one run's manifest and tables.

Output is rich tables. Piped or captured (not a terminal), it is plain text: no colour, no box
drawing, lines at most `PIPED_WIDTH` characters, so `grep`/`less` and logs read it as is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from nasbench.runs import list_runs, load_run

PIPED_WIDTH = 160
CELL_CHARS = 40  # a longer table cell (a device key, an arch) is cut to this many characters
MANIFEST_CHARS = 100  # manifest values (git commit, error, versions) get more room
ARCH_ID_CHARS = 12


def command(
    run: str | None = typer.Argument(None, help="Run directory or name under --root."),
    root: Path | None = typer.Option(
        None, "--root", help="Where runs live [default: $NASBENCH_RESULTS, else ./results]."),
    rows: int = typer.Option(10, "--rows", min=0, help="Rows of each table to show."),
) -> None:
    """Without RUN, a table of runs; with RUN, its manifest and the head of each table."""
    from nasbench.config.sections import default_results_root

    console = _console()
    root = default_results_root() if root is None else root
    if run is None:
        runs = list_runs(root)
        console.print(_table(runs, console) if not runs.empty else f"no runs under {root}/")
        return
    opened = load_run(run, root=root)
    console.print(f"run: {opened.path}")
    console.print(_table(_manifest_summary(opened.manifest), console, chars=MANIFEST_CHARS))
    for name in ["metrics", *opened.tables()]:
        frame = _run_table(opened, name)
        if not frame.empty:
            console.print(f"\n{name} ({len(frame)} rows)")
            console.print(_table(_without_arch(frame.head(rows)), console))


def _console():
    """Rich's own terminal detection decides colour; off a terminal the width is fixed, as rich
    would otherwise wrap at 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH, markup=False,
                   highlight=False, emoji=False)


def _table(frame: Any, console: Any, chars: int = CELL_CHARS):
    """A rich Table of `frame`'s cells as strings of at most `chars`; boxed only on a terminal."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for column in frame.columns:  # a narrow terminal cuts cells, but never an arch_id
        table.add_column(str(column), no_wrap=True, overflow="ellipsis",
                         min_width=ARCH_ID_CHARS if column == "arch_id" else None)
    for values in frame.itertuples(index=False):
        table.add_row(*(_cell(v, chars) for v in values))
    return table


def _cell(value: Any, chars: int) -> str:
    import pandas as pd

    if isinstance(value, pd.Timestamp):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif value is None or value is pd.NA:
        text = ""
    else:
        text = str(value)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _manifest_summary(manifest: dict[str, Any]):
    """Key/value rows of the manifest without the config (that is config.yaml); nested values
    (versions, supernet) as one short `k=v` line each."""
    import pandas as pd

    def short(value: Any) -> Any:
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        return ", ".join(map(str, value)) if isinstance(value, list) else value

    items = [(k, short(v)) for k, v in manifest.items() if k != "config" and v is not None]
    return pd.DataFrame(items, columns=["field", "value"])


def _run_table(opened: Any, name: str) -> Any:
    """metrics.csv or a Parquet table; evaluations and pareto typed and with `is_pareto`."""
    if name == "metrics":
        return opened.metrics
    if name in ("evaluations", "pareto"):
        return getattr(opened, name)
    return opened.read_table(name)


def _without_arch(frame: Any) -> Any:
    """`arch` is a few hundred characters of JSON; `arch_id` names it in 12."""
    return frame.drop(columns=["arch"]) if "arch_id" in frame.columns else frame
