"""Submit `nasbench` commands to a Ray cluster through the Jobs API, and manage the jobs.

The address defaults to the local cluster from `nasbench cluster up`. The project directory
travels as the job's `working_dir` (Ray puts it first on PYTHONPATH), minus run outputs,
the venv and git history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbench.distributed.auth import auth_headers, find_token
from nasbench.distributed.cluster import read_state, require_state
from nasbench.distributed.dashboard import ClusterError, check_ray, normalise_address

WORKING_DIR_EXCLUDES = [
    "results/", ".venv/", ".git/", "__pycache__/", "*.pyc",
    ".pytest_cache/", ".ruff_cache/", "*.egg-info/",
]
_UNKNOWN_JOB = re.compile(r"status code 404|does not exist", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """A cluster to talk to: its dashboard URL, the auth headers, and whether it is ours."""

    address: str
    headers: dict[str, str]
    is_local: bool


def resolve_target(address: str | None, home: Path) -> Target:
    """Pick the dashboard URL (given, else the local cluster) and the token that goes with it."""
    local = read_state(home)
    if address is None:
        local = require_state(home)
        url = local.dashboard_url
    else:
        url = normalise_address(address)
    is_local = local is not None and url == local.dashboard_url
    token = find_token(Path(local.token_path) if is_local and local else None)
    return Target(address=url, headers=auth_headers(token), is_local=is_local)


def connect(target: Target):
    """A `JobSubmissionClient` for `target`, after a bounded reachability/auth probe."""
    from ray.job_submission import JobSubmissionClient

    check_ray(target.address, target.headers)
    return JobSubmissionClient(target.address, headers=dict(target.headers))


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Hide Ray's INFO/WARNING chatter about packaging the working dir; errors still show."""
    names = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)


def _job_call(job_id: str, target: Target, fn: Callable[[], Any]) -> Any:
    """Run one Jobs API call, turning 'no such job' into a one-line UserError."""
    try:
        return fn()
    except RuntimeError as exc:
        if _UNKNOWN_JOB.search(str(exc)):
            raise ClusterError(f"no job with id {job_id!r} on {target.address}") from None
        raise


def submit(
    target: Target, argv: list[str], working_dir: Path, *, submission_id: str | None = None
) -> str:
    """Submit `nasbench <argv>` and return the job id.

    Relative run roots resolve inside the job's copy of the working dir; pass
    `--set run.root=/shared/path` to keep runs where you can read them.
    """
    if not argv:
        raise ClusterError("nothing to submit; usage: nasbench submit -- train config.yaml")
    if argv[0] == "nasbench":
        argv = argv[1:]
    working_dir = working_dir.resolve()
    if not working_dir.is_dir():
        raise ClusterError(f"working dir {working_dir} is not a directory")
    client = connect(target)
    try:
        with _quiet_ray_logs():
            return client.submit_job(
                entrypoint=shlex.join(["nasbench", *argv]),
                submission_id=submission_id,
                runtime_env={"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES},
                metadata={"submitted_by": "nasbench"},
            )
    except ValueError as exc:  # Ray's size limit on the packaged working dir
        raise ClusterError(f"cannot ship {working_dir}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:  # e.g. the chosen job id is taken
        raise ClusterError(f"{target.address} refused the job: {_server_message(exc)}") from None


def _server_message(exc: RuntimeError) -> str:
    """The server's reason from Ray's 'Request failed with status code N: <text>.' error.

    For a rejected request the text is a server traceback; its last line is the reason.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip(" .")]
    text = lines[-1] if len(lines) > 1 else lines[0].split(": ", 1)[-1]
    return re.sub(r"^\w+(Error|Exception): ", "", text).rstrip(".") + "."


def list_jobs(target: Target) -> list[Any]:
    """All jobs the cluster knows, oldest first."""
    jobs = connect(target).list_jobs()
    return sorted(jobs, key=lambda job: job.start_time or 0)


def job_info(target: Target, job_id: str) -> Any:
    """The `JobDetails` of one job."""
    client = connect(target)
    return _job_call(job_id, target, lambda: client.get_job_info(job_id))


def job_logs(target: Target, job_id: str) -> str:
    """Everything the job printed so far."""
    client = connect(target)
    return _job_call(job_id, target, lambda: client.get_job_logs(job_id))


def follow_logs(target: Target, job_id: str) -> Iterator[str]:
    """Yield log chunks as the job prints them, until it ends."""
    client = connect(target)
    _job_call(job_id, target, lambda: client.get_job_info(job_id))
    stream = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            with _quiet_ray_logs():
                try:
                    chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def stop_job(target: Target, job_id: str) -> bool:
    """Ask the job to stop; True if it was still running."""
    client = connect(target)
    return bool(_job_call(job_id, target, lambda: client.stop_job(job_id)))


def wait_for(
    target: Target, job_id: str, timeout: float, poll: float = 0.5
) -> str:
    """Block until the job reaches a terminal state; return that state's name."""
    import time

    from ray.job_submission import JobStatus

    client = connect(target)
    deadline = time.monotonic() + timeout
    while True:
        status = _job_call(job_id, target, lambda: client.get_job_status(job_id))
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return str(status.value)
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {status.value} after {timeout:g} s")
        time.sleep(poll)
