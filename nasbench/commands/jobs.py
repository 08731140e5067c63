"""`nasbench jobs list|status|logs|stop`: manage jobs on a Ray cluster."""

from __future__ import annotations

import datetime as dt

import typer

app = typer.Typer(help="List, inspect, follow and stop Ray jobs.")

ADDRESS_OPTION = typer.Option(
    None, "--address", help="Ray dashboard URL (default: the cluster from `cluster up`).",
    show_default=False,
)
JOB_ID = typer.Argument(..., help="Job id as printed by `nasbench submit`.")


def _target(address: str | None):
    from nasbench.distributed.cluster import nasbench_home
    from nasbench.distributed.jobs import resolve_target

    return resolve_target(address, nasbench_home())


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_(address: str | None = ADDRESS_OPTION) -> None:
    """One line per job: id, status, start time (UTC), entrypoint."""
    from nasbench.distributed.jobs import list_jobs

    for job in list_jobs(_target(address)):
        job_id = job.submission_id or job.job_id
        typer.echo(f"{job_id}  {job.status.value:<9} {_when(job.start_time)}  {job.entrypoint}")


@app.command()
def status(job_id: str = JOB_ID, address: str | None = ADDRESS_OPTION) -> None:
    """Status, message and timing of one job."""
    from nasbench.distributed.jobs import job_info

    info = job_info(_target(address), job_id)
    typer.echo(f"{job_id}: {info.status.value}")
    typer.echo(f"entrypoint: {info.entrypoint}")
    typer.echo(f"started:    {_when(info.start_time)}  ended: {_when(info.end_time)}")
    if info.message:  # a failed job's message also carries its log tail; `logs` shows that
        typer.echo(f"message:    {info.message.splitlines()[0]}")


@app.command()
def logs(
    job_id: str = JOB_ID,
    address: str | None = ADDRESS_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
) -> None:
    """Print the job's output (stdout and stderr)."""
    from nasbench.distributed.jobs import follow_logs, job_logs

    target = _target(address)
    if not follow:
        typer.echo(job_logs(target, job_id), nl=False)
        return
    for chunk in follow_logs(target, job_id):
        typer.echo(chunk, nl=False)


@app.command()
def stop(job_id: str = JOB_ID, address: str | None = ADDRESS_OPTION) -> None:
    """Ask a running job to stop (SIGTERM, then SIGKILL after Ray's grace period)."""
    from nasbench.distributed.jobs import stop_job

    was_running = stop_job(_target(address), job_id)
    typer.echo(f"{job_id}: {'stop requested' if was_running else 'already finished'}")
