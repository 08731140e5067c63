"""Options shared by every subcommand, so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path

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



def resume_target(command: str, resume: Path, config: Path | None) -> tuple[Path, Path]:
    """(run directory, config to resolve) for `COMMAND --resume RUN [CONFIG]`: the run must be one
    `command` made, checked before its config is read (a search run's config given to `train`
    would otherwise fail on a key of the wrong model), and its config.yaml must be there."""
    from nasbench.runs import load_run
    from nasbench_core.errors import RunError

    run = load_run(resume)
    made_by = run.manifest.get("command")
    if made_by != command:
        raise RunError(f"cannot resume {run.path} with `nasbench {command}`: it is a `{made_by}` run")
    stored = run.path / "config.yaml"
    if config is None and not stored.is_file():
        raise RunError(f"cannot resume {run.path}: it has no config.yaml (give the config file)")
    return run.path, config or stored
