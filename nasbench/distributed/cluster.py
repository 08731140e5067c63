"""A local Ray head on 127.0.0.1 with token auth, started and stopped by `nasbench cluster`.

We run `ray start --head --block` as our own child in a new session and remember its pid.
`down` sends that one process SIGTERM; Ray then drains and stops the processes it spawned.
(`ray stop` would kill every Ray process on the machine, including other users' clusters.)
State lives in `$NASBENCH_HOME/cluster.json` (default `~/.nasbench`) next to the token file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nasbench.distributed.auth import auth_headers, new_token_file, read_token
from nasbench.distributed.dashboard import ClusterError, check_ray, cluster_resources
from nasbench_core.atomic import atomic_write_text

HOST = "127.0.0.1"
MAX_PORT = 65535
STATE_FILE = "cluster.json"
TOKEN_FILE = "ray_auth_token"
LOG_FILE = "ray-head.log"


def nasbench_home() -> Path:
    """Per-user state directory: `$NASBENCH_HOME`, else `~/.nasbench`."""
    return Path(os.environ.get("NASBENCH_HOME") or Path.home() / ".nasbench").expanduser()


@dataclass(frozen=True)
class ClusterState:
    """What `cluster up` remembers so later commands can find and stop the head."""

    address: str  # GCS address, for ray.init(address=...)
    dashboard_url: str  # Jobs API / dashboard, for `nasbench submit`
    pid: int  # the `ray start --block` process we own
    token_path: str
    temp_dir: str
    log_path: str
    num_cpus: int | None
    started_at: float


def read_state(home: Path) -> ClusterState | None:
    """The remembered cluster, or None when there is none (a stale file is removed)."""
    path = home / STATE_FILE
    try:
        state = ClusterState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"{path} is not a nasbench cluster state file ({exc}); delete it") from None
    if not _is_our_head(state):
        path.unlink(missing_ok=True)
        return None
    return state


def _is_our_head(state: ClusterState) -> bool:
    """True if `state.pid` is still the `ray start` we launched (pids get reused)."""
    import psutil

    try:
        cmdline = psutil.Process(state.pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "--block" in cmdline and f"--temp-dir={state.temp_dir}" in cmdline


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _head_env(token_path: Path) -> dict[str, str]:
    """Environment for the head: token auth on, loopback only, this venv first on PATH.

    Jobs inherit it, so their `nasbench` entrypoint resolves to this project's install.
    """
    env = dict(os.environ)
    env.pop("RAY_AUTH_TOKEN", None)  # the token file below is the single source of truth
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def parse_resources(items: list[str]) -> dict[str, float]:
    """`["edge-arm=1", ...]` -> {"edge-arm": 1.0}; one line naming a malformed item."""
    from search.placement import check_label

    out: dict[str, float] = {}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount) if sep else 1.0
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ClusterError(f"--resource {item!r}: expected NAME=AMOUNT with a positive amount")
        out[check_label(name.strip(), f"--resource {item!r}")] = value
    return out


def start_head(
    home: Path,
    *,
    port: int = 6379,
    dashboard_port: int = 8265,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    resources: dict[str, float] | None = None,
    timeout: float = 90.0,
) -> ClusterState:
    """Start a Ray head on 127.0.0.1 and wait until its dashboard answers with our token."""
    if (state := read_state(home)) is not None:
        raise ClusterError(
            f"a local Ray cluster is already running at {state.dashboard_url} (pid {state.pid}); "
            "run `nasbench cluster down` first"
        )
    for name, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 1 <= value <= MAX_PORT:
            raise ClusterError(f"{name} {value}: expected a port from 1 to {MAX_PORT}")
        if not _port_free(value):
            raise ClusterError(f"port {value} on {HOST} is in use; choose another with {name}")
    home.mkdir(parents=True, exist_ok=True)
    token_path = new_token_file(home / TOKEN_FILE)
    # A short root keeps Ray's unix socket paths under the 107-byte limit.
    temp_dir = Path("/tmp") / f"nasbench-ray-{port}"
    log_path = home / LOG_FILE
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [
        str(ray_bin), "start", "--head", "--block",
        f"--node-ip-address={HOST}", f"--port={port}",
        f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if object_store_mb is not None:
        cmd.append(f"--object-store-memory={object_store_mb * 1024 * 1024}")
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=_head_env(token_path), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    state = ClusterState(
        address=f"{HOST}:{port}", dashboard_url=f"http://{HOST}:{dashboard_port}", pid=proc.pid,
        token_path=str(token_path), temp_dir=str(temp_dir), log_path=str(log_path),
        num_cpus=num_cpus, started_at=time.time(),
    )
    try:
        _wait_until_ready(proc, state, timeout)
    except BaseException:
        _terminate(proc.pid, grace=10.0)
        raise
    atomic_write_text(home / STATE_FILE, json.dumps(asdict(state), indent=2))
    return state


def _wait_until_ready(proc: subprocess.Popen, state: ClusterState, timeout: float) -> None:
    """Poll the dashboard until it answers and the head node reports its CPUs."""
    headers = auth_headers(read_token(Path(state.token_path)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"`ray start` exited with status {proc.returncode}; see {state.log_path}"
            )
        with contextlib.suppress(ClusterError):
            check_ray(state.dashboard_url, headers)
            if cluster_resources(state.dashboard_url, headers).get("CPU", (0, 0))[1] > 0:
                return
        time.sleep(0.5)
    raise ClusterError(f"Ray head did not come up within {timeout:g} s; see {state.log_path}")


def _terminate(pid: int, grace: float) -> None:
    """SIGTERM our `ray start` (it stops its children); SIGKILL its session if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (started by an earlier CLI call)
            finished = 0 if _alive(pid) else pid
        if finished == pid:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # start_new_session made pid its own group leader


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_head(home: Path, grace: float = 45.0) -> ClusterState:
    """Stop the cluster `start_head` started and forget it; error if none is running.

    Its Ray temp dir (session logs, unpacked job working dirs) goes too; `ray start`'s own
    log stays in `$NASBENCH_HOME/ray-head.log`.
    """
    state = read_state(home)
    if state is None:
        raise ClusterError("no local Ray cluster is running (nothing to stop)")
    _terminate(state.pid, grace)
    (home / STATE_FILE).unlink(missing_ok=True)
    Path(state.token_path).unlink(missing_ok=True)
    shutil.rmtree(state.temp_dir, ignore_errors=True)
    return state


def require_state(home: Path) -> ClusterState:
    """The running local cluster, or a UserError telling how to start one."""
    state = read_state(home)
    if state is None:
        raise ClusterError(
            "no local Ray cluster is running; start one with `nasbench cluster up` "
            "or pass --address http://HOST:8265"
        )
    return state
