"""`nasbench submit [--address URL] -- <command> [args]`: run a nasbench command as a Ray job."""

from __future__ import annotations

from pathlib import Path

import typer


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

    target = resolve_target(address, nasbench_home())
    submitted = submit(target, list(argv), working_dir, submission_id=job_id)
    typer.echo(submitted)
