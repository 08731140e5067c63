"""`nasbench submit [--address URL] -- <command> [args]`: run a nasbench command as a Ray job.

The command is parsed and its config validated here first, exactly as the local command would,
so a typo fails at once in one line (exit 2) instead of on the cluster a minute later.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

CONFIGURED = ("train", "search", "prune", "latency measure", "quickstart")
"""Commands whose config (file + `--set`) is validated before the job is shipped."""


def command(
    argv: list[str] = typer.Argument(
        ..., metavar="COMMAND", help="The nasbench command to run, after `--`."
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray dashboard URL (default: the cluster from `cluster up`).",
        show_default=False,
    ),
    working_dir: Path = typer.Option(
        Path("."), "--working-dir", help="Project dir shipped to the job (minus results/, .venv)."
    ),
    job_id: str | None = typer.Option(None, "--job-id", help="Choose the job id yourself."),
) -> None:
    """Submit `nasbench COMMAND ARGS` to a Ray cluster through the Jobs API; prints the job id."""
    from nasbench.distributed.cluster import nasbench_home
    from nasbench.distributed.jobs import resolve_target, submit

    argv = list(argv[1:] if argv and argv[0] == "nasbench" else argv)
    check_locally(argv, working_dir)
    target = resolve_target(address, nasbench_home())
    submitted = submit(target, argv, working_dir, submission_id=job_id)
    typer.echo(submitted)


def check_locally(argv: list[str], working_dir: Path) -> None:
    """Parse `nasbench ARGV` with the local CLI and, for a command with a config, resolve it in
    `working_dir` (where the job runs, so relative paths mean the same). Usage and config errors
    propagate as the local command's would. A run given to `--resume` lives on the cluster: only
    an explicit config is checked then; a leading option (`--help`) is left to the job."""
    from nasbench.runners import config_model
    from nasbench.runners.config import resolve

    if not argv or argv[0].startswith("-") or not working_dir.is_dir():
        return  # nothing to parse; `submit` itself reports a missing command or working dir
    path, params = _parse(argv)
    if path not in CONFIGURED:
        return
    config, overrides = params.get("config"), params.get("overrides") or []
    with contextlib.chdir(working_dir):
        if config is not None and Path(config).is_dir():
            return  # `latency measure RUN_DIR`: a run directory, read where the job runs
        if params.get("resume") is not None and config is None:
            return
        resolve(config_model(path.split()[0]), config, cli_overrides=overrides)


def _parse(argv: list[str]) -> tuple[str, dict]:
    """(command path without `nasbench`, e.g. "latency measure"; its parsed parameters)."""
    import typer.main

    from nasbench.cli import app

    cmd = typer.main.get_command(app)
    ctx = cmd.context_class(cmd, info_name="nasbench")
    args = list(argv)
    while hasattr(cmd, "resolve_command"):  # a group: the next argument names its subcommand
        if not args:
            ctx.fail("the command names no subcommand")
        name, cmd, args = cmd.resolve_command(ctx, args)
        if hasattr(cmd, "resolve_command"):
            ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
    leaf = cmd.make_context(name, args, parent=ctx)
    return leaf.command_path.split(" ", 1)[1], leaf.params
