"""Ray glue that needs no cluster: addresses, token lookup, state files, clear errors."""

from __future__ import annotations

import json
import socket

import pytest

from nasbench.distributed import auth, cluster
from nasbench.distributed.dashboard import ClusterError, normalise_address


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated NASBENCH_HOME and HOME, so no real token or cluster state leaks in."""
    monkeypatch.setenv("NASBENCH_HOME", str(tmp_path / "nb"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return tmp_path / "nb"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_normalise_address_adds_scheme_and_strips_slash():
    assert normalise_address("127.0.0.1:8265/") == "http://127.0.0.1:8265"
    assert normalise_address("https://ray.example:443") == "https://ray.example:443"
    with pytest.raises(ClusterError, match="must be a dashboard URL"):
        normalise_address("ray://127.0.0.1:10001")


def test_token_precedence_env_then_path_then_cluster_then_ray_default(home, tmp_path, monkeypatch):
    cluster_token = auth.new_token_file(tmp_path / "cluster_token")
    assert oct(cluster_token.stat().st_mode & 0o777) == "0o600"
    assert auth.find_token(None) is None
    ray_default = tmp_path / "home" / ".ray" / "auth_token"
    ray_default.parent.mkdir(parents=True)
    ray_default.write_text("from-ray-default\n")
    assert auth.find_token(None) == "from-ray-default"
    assert auth.find_token(cluster_token) == cluster_token.read_text()
    explicit = tmp_path / "explicit"
    explicit.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(explicit))
    assert auth.find_token(cluster_token) == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth.find_token(cluster_token) == "from-env"
    assert auth.auth_headers("from-env") == {"Authorization": "Bearer from-env"}
    assert auth.auth_headers(None) == {}


def test_token_path_env_to_missing_file_is_a_user_error(home, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(ClusterError, match="RAY_AUTH_TOKEN_PATH points to .*nope"):
        auth.find_token(None)


def test_stale_state_file_is_forgotten(home):
    home.mkdir(parents=True)
    state = {
        "address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:2", "pid": 2**22 + 7,
        "token_path": str(home / "t"), "temp_dir": "/tmp/x", "log_path": str(home / "l"),
        "num_cpus": None, "started_at": 0.0,
    }
    (home / cluster.STATE_FILE).write_text(json.dumps(state))
    assert cluster.read_state(home) is None
    assert not (home / cluster.STATE_FILE).exists()


def test_cluster_down_without_cluster(cli, home):
    result = cli("cluster", "down")
    assert result.code == 2
    assert result.err.strip() == "nasbench: error: no local Ray cluster is running (nothing to stop)"


def test_submit_without_address_or_cluster(cli, home):
    result = cli("submit", "--", "train")
    assert result.code == 2
    assert "no local Ray cluster is running; start one with `nasbench cluster up`" in result.err


def test_unreachable_address_is_one_line(cli, home):
    port = _closed_port()
    result = cli("jobs", "list", "--address", f"127.0.0.1:{port}")
    assert result.code == 2
    assert result.err.strip() == (
        f"nasbench: error: cannot reach a Ray dashboard at http://127.0.0.1:{port} "
        "(connection refused or host unknown); is the cluster up?"
    )


def test_cluster_up_refuses_busy_port(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} on 127.0.0.1 is in use"):
            cluster.start_head(home, port=port, dashboard_port=_closed_port())


def test_two_worker_shards_cover_exactly_the_one_worker_batches():
    import torch
    from torch.utils.data import TensorDataset

    from nasbench.distributed.train import sharded_loader

    data = TensorDataset(torch.arange(40))
    one = sharded_loader(data, 8, world_size=1, rank=0, seed=3)
    ranks = [sharded_loader(data, 4, world_size=2, rank=r, seed=3) for r in (0, 1)]
    epochs = []
    for _ in range(2):
        single = [set(b[0].tolist()) for b in one]
        pairs = zip(*(list(r) for r in ranks), strict=True)
        assert single == [set(a[0].tolist()) | set(b[0].tolist()) for a, b in pairs]
        epochs.append(single)
    assert epochs[0] != epochs[1]  # each pass reshuffles (set_epoch)
    resumed = sharded_loader(data, 8, world_size=1, rank=0, seed=3, first_epoch=1)
    assert [set(b[0].tolist()) for b in resumed] == epochs[1]


def test_loopback_detection():
    from nasbench.distributed.train import _is_loopback

    assert _is_loopback("127.0.0.1:6379") and _is_loopback("localhost:6379")
    assert not _is_loopback("10.0.0.5:6379")


class _WorkerGroupError(Exception):
    """Shaped like `ray.train.WorkerGroupError` (rank -> exception), without importing Ray."""

    def __init__(self, failures):
        super().__init__("training failed")
        self.worker_failures = failures


def test_worker_user_error_becomes_one_line():
    from nasbench.distributed.train import user_error_from
    from nasbench_core.errors import CheckpointError

    failed = _WorkerGroupError({1: CheckpointError("cannot resume: lr changed")})
    error = user_error_from(failed)
    assert isinstance(error, CheckpointError)
    assert str(error) == "Ray worker 1: cannot resume: lr changed"
    assert user_error_from(_WorkerGroupError({0: RuntimeError("bug")})) is None


def test_server_refusal_is_reduced_to_its_reason():
    from nasbench.distributed.jobs import _server_message

    traceback_reply = RuntimeError(
        "Request failed with status code 400: Traceback (most recent call last):\n"
        '  File "job_head.py", line 1, in submit_job\n'
        "ValueError: Job with submission_id sleeper already exists. "
        "Please use a different submission_id.\n."
    )
    assert _server_message(traceback_reply) == (
        "Job with submission_id sleeper already exists. Please use a different submission_id."
    )
    plain = RuntimeError("Request failed with status code 500: No available agent, try later..")
    assert _server_message(plain) == "No available agent, try later."


def test_search_workers_the_cluster_cannot_place_are_refused_in_one_line(monkeypatch):
    import ray

    from nasbench.errors import ConfigError
    from nasbench.runners.search import SearchConfig, _check_capacity

    def config(**ray_section):
        return SearchConfig(runner="ray", ray=ray_section)

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "edge": 1.0})
    _check_capacity(config(num_workers=2))
    _check_capacity(config(num_workers=2, resources={"edge": 0.5}))
    _check_capacity(SearchConfig(runner="ray", objectives=["top1", "latency_ms@node:edge"]))
    with pytest.raises(ConfigError, match=r"^ray: 3 workers need 3 CPU; the cluster has 2$"):
        _check_capacity(config(num_workers=3))
    with pytest.raises(ConfigError, match=r"^ray: 2 workers need 0.002 gpu_edge; the cluster has 0$"):
        _check_capacity(config(num_workers=2, resources={"gpu_edge": 0.001}))
    with pytest.raises(ConfigError, match=r"^objective latency_ms@node:arm: no node of the Ray "
                                          r"cluster offers resource 'arm'"):
        _check_capacity(SearchConfig(runner="ray", objectives=["top1", "latency_ms@node:arm"]))
