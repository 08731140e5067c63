"""`nasbench jobs`: placeholder until its capability lands."""

from __future__ import annotations

import typer

from nasbench.commands.common import not_built

app = typer.Typer(help="Not built yet.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def main() -> None:
    """Not built yet: says so and exits 2."""
    raise not_built("jobs", "issue 8, Ray jobs")
