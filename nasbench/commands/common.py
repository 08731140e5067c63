"""Options shared by every subcommand, so they read the same everywhere."""

from __future__ import annotations

import typer

CONFIG_ARGUMENT = typer.Argument(
    None, help="YAML config file (defaults apply when omitted).", show_default=False
)
SET_OPTION = typer.Option(
    [], "--set", help="Override a config value: --set train.epochs=3 (repeatable).",
    metavar="KEY=VALUE",
)
RESUME_OPTION = typer.Option(
    None, "--resume", help="Continue the run in this directory.", show_default=False
)
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars, minimal output.")

