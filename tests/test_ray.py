"""A real local Ray head (started by our cluster code): jobs, auth errors, Ray Train.

One module so the head starts once: `pytest -m ray tests/test_ray.py`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nasbench.distributed import cluster, jobs
from nasbench.distributed.dashboard import ClusterError
from search.evaluations import log_path, read_log

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """One head for the module, on free loopback ports, with its own NASBENCH_HOME."""
    home = tmp_path_factory.mktemp("nasbench_home")
    keys = ("NASBENCH_HOME", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["NASBENCH_HOME"] = str(home)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    state = cluster.start_head(
        home, port=cluster.free_port(), dashboard_port=cluster.free_port(), num_cpus=2,
        object_store_mb=200, resources={"edge": 1},
    )
    try:
        yield state
    finally:
        cluster.stop_head(home)
        assert cluster.read_state(home) is None
        with pytest.raises(ProcessLookupError):
            os.kill(state.pid, 0)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_second_up_is_refused(head):
    with pytest.raises(ClusterError, match="already running at " + head.dashboard_url):
        cluster.start_head(Path(os.environ["NASBENCH_HOME"]))


def test_status_shows_address_dashboard_and_cpus(cli, head):
    result = cli("cluster", "status")
    assert result.code == 0, result.err
    assert head.address in result.out
    assert head.dashboard_url in result.out
    assert "CPU:                0 / 2" in result.out


def test_submitted_train_succeeds_logs_and_writes_its_run(cli, head, tmp_path):
    root = tmp_path / "results"
    submitted = cli(
        "submit", "--working-dir", str(ROOT), "--", "train", "--set", "train.epochs=1",
        "--set", "train.warmup_epochs=0", "--set", "train.max_steps_per_epoch=2",
        "--set", "train.val_max_batches=1", "--set", f"run.root={root}", "--set", "run.name=job",
    )
    assert submitted.code == 0, submitted.err
    job_id = submitted.out.strip()
    assert job_id.startswith("raysubmit_")
    target = jobs.resolve_target(None, Path(os.environ["NASBENCH_HOME"]))
    assert jobs.wait_for(target, job_id, timeout=240) == "SUCCEEDED", jobs.job_logs(target, job_id)
    logs = cli("jobs", "logs", job_id)
    assert f"trained 1 epochs -> {root / 'job'}" in logs.out
    assert f"{job_id}  SUCCEEDED" in cli("jobs", "list").out
    assert cli("jobs", "status", job_id).out.startswith(f"{job_id}: SUCCEEDED")
    followed = cli("jobs", "logs", job_id, "--follow")
    assert "Running entrypoint for job" in followed.out
    from nasbench import load_run

    run = load_run(root / "job")
    assert run.status == "completed"
    assert list(run.metrics["epoch"]) == [1]


def test_stop_ends_a_running_job(cli, head):
    target = jobs.resolve_target(None, Path(os.environ["NASBENCH_HOME"]))
    client = jobs.connect(target)
    job_id = client.submit_job(
        entrypoint="python -c 'import time; time.sleep(120)'", submission_id="sleeper"
    )
    deadline = time.monotonic() + 60
    while client.get_job_status(job_id).value != "RUNNING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    taken = cli("submit", "--working-dir", str(ROOT), "--job-id", "sleeper", "--", "--help")
    assert taken.code == 2
    assert taken.err.startswith(f"nasbench: error: {head.dashboard_url} refused the job: ")
    assert "sleeper" in taken.err and len(taken.err.strip().splitlines()) == 1
    stopped = cli("jobs", "stop", job_id)
    assert stopped.code == 0, stopped.err
    assert stopped.out.strip() == f"{job_id}: stop requested"
    assert jobs.wait_for(target, job_id, timeout=60) == "STOPPED"


def test_unknown_job_id(cli, head):
    for sub in ("status", "logs", "stop"):
        result = cli("jobs", sub, "raysubmit_doesnotexist")
        assert result.code == 2
        assert result.err.strip() == (
            f"nasbench: error: no job with id 'raysubmit_doesnotexist' on {head.dashboard_url}"
        )


def test_missing_and_wrong_token(cli, head, tmp_path, monkeypatch):
    monkeypatch.setenv("NASBENCH_HOME", str(tmp_path / "other"))  # not this cluster's state
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    missing = cli("jobs", "list", "--address", head.dashboard_url)
    assert missing.code == 2
    assert missing.err.strip() == (
        f"nasbench: error: Ray at {head.dashboard_url} requires an auth token and none was "
        "found; set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
    )
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    wrong = cli("jobs", "list", "--address", head.dashboard_url)
    assert wrong.code == 2
    assert "rejected the auth token" in wrong.err
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", head.token_path)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert cli("jobs", "list", "--address", head.dashboard_url).code == 0


# -- Ray Train --------------------------------------------------------------------------------
DATA = {"name": "digits", "resolution": 16, "channels": 1, "batch_size": 8}


def _vit():
    import supernets

    return supernets.create("vit", preset="tiny", num_classes=10, in_chans=1, img_size=16,
                            patch_size=8)


def _hparams():
    from supernets.train import TrainHParams

    return TrainHParams(epochs=3, lr=0.05, max_steps_per_epoch=2, warmup_epochs=0, precision="fp32",
                        val_max_batches=1, keep_checkpoints=2)


def _weights(stem):
    from safetensors.torch import load_file

    return load_file(str(stem) + ".safetensors")


@pytest.fixture(scope="module")
def two_worker_run(head, tmp_path_factory):
    """2 CPU workers x batch 8 on digits, 3 epochs of 2 steps, logged into a run directory."""
    from nasbench.distributed.train import RayScaling, train_on_ray

    run_dir = tmp_path_factory.mktemp("ray_run")
    rows = []
    outcome = train_on_ray(
        run_dir, build_config=_vit().build_config(), data=DATA, hparams=_hparams(), seed=0,
        scaling=RayScaling(num_workers=2), log_metrics=rows.append, address=head.address,
    )
    return run_dir, outcome, rows


def test_two_workers_train_and_write_the_run(two_worker_run):
    from supernets.checkpoint import load_supernet

    run_dir, outcome, rows = two_worker_run
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert outcome.epochs_completed == 3 and outcome.resumed_epochs == 0
    assert outcome.checkpoint == run_dir / "checkpoints" / "epoch_0003"
    net, meta = load_supernet(outcome.checkpoint)
    assert meta["epoch"] == 3 and meta["global_step"] == 6
    assert sorted(p.name for p in (run_dir / "ray" / "train").glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0002", "checkpoint_epoch_0003",
    ]


def test_ddp_matches_one_process_with_double_batch(two_worker_run):
    """2 workers x batch b under DDP == 1 process x batch 2b (LayerNorm net: no batch stats)."""
    import torch

    from nasbench.config.sections import DataConfig
    from nasbench.data import load_dataset
    from nasbench.distributed.train import sharded_loader
    from nasbench_core.seeding import seed_everything
    from supernets.train import train_supernet

    _, outcome, _ = two_worker_run
    seed_everything(0)
    bundle = load_dataset(DataConfig(**{**DATA, "batch_size": 16}), seed=0)
    net = _vit()
    train_supernet(
        net, sharded_loader(bundle.train_dataset, 16, 1, 0, seed=0), None, _hparams(),
        arch_sampler_seed=0,
    )
    ray_weights = _weights(outcome.checkpoint)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(ray_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_killed_worker_resumes_from_checkpoint_and_loses_nothing(head, two_worker_run, tmp_path):
    import torch

    from nasbench.distributed.train import RayScaling, train_on_ray

    marks = tmp_path / "marks"
    marks.mkdir()

    def kill_rank1_after_epoch2(epoch: int, rank: int, resumed: bool) -> None:
        (marks / f"epoch{epoch}-rank{rank}-{'resumed' if resumed else 'first'}").touch()
        if epoch == 2 and rank == 1 and not resumed:
            # Ray Train's controller collects reports when it polls the workers (every 2 s); a
            # worker that dies before that poll takes its last reports along, and with them the
            # epoch's checkpoint. Epochs here last a fraction of a second, so wait for a poll.
            time.sleep(5)
            os.kill(os.getpid(), 9)

    rows = []
    outcome = train_on_ray(
        tmp_path / "run", build_config=_vit().build_config(), data=DATA, hparams=_hparams(),
        seed=0, scaling=RayScaling(num_workers=2, max_failures=1), log_metrics=rows.append,
        address=head.address, after_epoch=kill_rank1_after_epoch2,
    )
    assert (marks / "epoch2-rank1-first").exists()
    assert (marks / "epoch3-rank1-resumed").exists()  # the restarted group finished the run
    assert [row["epoch"] for row in outcome.history] == [1, 2, 3]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    expected = _weights(two_worker_run[1].checkpoint)
    for name, value in _weights(outcome.checkpoint).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


# -- distributed evaluation -------------------------------------------------------------------
def test_actor_pool_retries_records_failures_and_builds_metrics_once(head, tmp_path):
    import math

    from nasbench.distributed.evaluate import evaluate_on_ray
    from nasbench.distributed.train import ray_session

    builds, flaky = tmp_path / "builds", tmp_path / "flaky_failed_once"
    builds.mkdir()

    def make_metrics():
        (builds / str(os.getpid())).touch()  # one file per actor that built its metrics

        def picky(arch):
            if arch["x"] == 3:
                raise ValueError("x=3 is not allowed")
            if arch["x"] == 2 and not flaky.exists():
                flaky.touch()
                raise RuntimeError("transient")
            return float(arch["x"] ** 2)

        return {"double": lambda arch: 2.0 * arch["x"], "picky": picky}

    seen = []
    with ray_session(head.address):
        outcomes = evaluate_on_ray(
            [{"x": i} for i in range(6)], make_metrics, num_actors=2, max_retries=1,
            num_cpus=0.5, on_result=seen.append,
        )
    assert [o.arch["x"] for o in outcomes] == list(range(6))
    assert sorted(o.arch["x"] for o in seen) == list(range(6))
    assert outcomes[2].ok and outcomes[2].attempts == 2
    assert outcomes[2].values == {"double": 4.0, "picky": 4.0}
    assert not outcomes[3].ok and outcomes[3].attempts == 2
    assert outcomes[3].error == "ValueError: x=3 is not allowed"
    assert math.isnan(outcomes[3].values["picky"]) and math.isnan(outcomes[3].values["double"])
    assert [o.values["picky"] for o in outcomes if o.arch["x"] not in (3,)] == [0, 1, 4, 16, 25]
    assert len(list(builds.iterdir())) == 2


# -- distributed search -----------------------------------------------------------------------
def _search_config(root: Path, name: str, **changes) -> dict:
    from tests.test_api import tiny_search

    cfg = tiny_search(root, name, ["top1", "params"])
    cfg["optimizer"] = {"name": "nsga2", "settings": {"pop_size": 4}}
    return {**cfg, "budget": 10, **changes}


def test_a_search_on_ray_workers_gives_the_in_process_table(head, tmp_path):
    """Same seed, same table: arch set, order and values do not depend on the workers."""
    import nasbench

    local = nasbench.search(_search_config(tmp_path, "local"), quiet=True).evaluations
    on_ray = nasbench.search(_search_config(
        tmp_path, "ray", runner="ray",
        ray={"address": head.address, "num_workers": 2, "cpus_per_worker": 1}), quiet=True)
    remote = on_ray.evaluations
    assert len(local) == 10
    columns = ["arch_id", "arch", "top1", "params", "generation"]
    assert remote[columns].equals(local[columns])
    journal = log_path(on_ray.path / "evaluations.parquet")
    assert len(journal.read_text().splitlines()) == 10  # each arch journaled once
    assert sorted(read_log(journal)["arch_id"]) == sorted(local["arch_id"])


def test_a_worker_killed_mid_evaluation_is_retried_and_the_arch_measured_once(head, tmp_path):
    import signal

    from nasbench.distributed.evaluate import MetricsPool, RayBackend
    from nasbench.distributed.train import ray_session
    from search.evaluations import EvaluationLog, Evaluator
    from search.objectives import Objective
    from supernets.space import SearchSpace

    space = SearchSpace({"x": list(range(8))})
    killed, builds = tmp_path / "killed", tmp_path / "builds"
    builds.mkdir()

    def make_metrics():
        (builds / str(os.getpid())).touch()

        def square(arch):
            if arch["x"] == 5 and not killed.exists():
                killed.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-evaluation
            return float(arch["x"] ** 2)

        return {"square": square}

    objective = Objective("square", lambda arch: float(arch["x"] ** 2), "min")
    journal = tmp_path / "evaluations.log.jsonl"
    with ray_session(head.address), \
            MetricsPool(make_metrics, num_actors=2, max_retries=1, num_cpus=0.5) as pool, \
            EvaluationLog(journal) as log:
        evaluator = Evaluator(space, [objective], backend=RayBackend([pool]), log=log)
        values = evaluator.evaluate([{"x": i} for i in range(8)])
    assert killed.exists()
    assert values["square"].tolist() == [float(i * i) for i in range(8)]
    assert [space.parse(a)["x"] for a in evaluator.df["arch"]] == list(range(8))  # batch order
    assert len(journal.read_text().splitlines()) == 8  # the killed arch is journaled once
    assert sorted(read_log(journal)["arch_id"]) == sorted(evaluator.df["arch_id"])
    assert len(list(builds.iterdir())) == 3  # two actors, one replacement for the killed one


def test_a_latency_placed_on_a_node_label_is_measured_there(head, tmp_path):
    """`latency_ms@node:edge`: its own worker pool on the nodes offering `edge`, its own column
    and device key; top1 is measured by the other pool."""
    import nasbench
    from search.evaluations import read_metadata

    cfg = _search_config(tmp_path, "edge", runner="ray", budget=4,
                         ray={"address": head.address, "num_workers": 1, "node_workers": 1},
                         latency={"repeats": 4, "warmup": 1, "threads": 1})
    cfg["objectives"] = ["top1", "latency_ms@node:edge"]
    run = nasbench.search(cfg, quiet=True)
    table = run.evaluations
    assert len(table) == 4 and (table["latency_ms@node:edge"] > 0).all()
    assert table["top1"].notna().all()
    device = read_metadata(run.path / "evaluations.parquet")["device"]
    assert device.startswith("latency_ms@node:edge=") and "threads=1" in device
    pools = {tuple(p["metrics"]): p["workers"] for p in run.manifest["ray_workers"]}
    assert set(pools) == {("top1",), ("latency_ms@node:edge",)}
    assert [w["resources"].get("edge") for w in pools[("latency_ms@node:edge",)]] == [0.001]
    assert [w["resources"].get("edge") for w in pools[("top1",)]] == [None]


def test_bench_search_ray_quick_finds_the_same_table_on_every_worker_count(head, tmp_path):
    from nasbench.bench.registry import BenchOptions, run_benchmark

    report, _ = run_benchmark("search_ray", BenchOptions(quick=True, out_dir=tmp_path,
                                                         params={"address": head.address}))
    figures = report["figures"]
    assert all(figures["tables_identical"].values())
    assert figures["ray_1_worker"]["evaluations"] == figures["ray_2_workers"]["evaluations"] == 8


AFTER_A_TOKEN_CLUSTER = """
import os, secrets, sys
token = sys.argv[1]
open(token, "w").write(secrets.token_hex(32))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
from nasbench.distributed.ray_private import use_local_cluster_token
use_local_cluster_token("127.0.0.1:1")  # what connecting to a token cluster leaves cached:
from ray._raylet import AuthenticationTokenLoader
assert AuthenticationTokenLoader.instance().has_token()  # the mode and the token, once read
os.environ.pop("RAY_AUTH_MODE"); os.environ.pop("RAY_AUTH_TOKEN_PATH"); os.remove(token)
import ray
from nasbench.distributed.train import ray_session
with ray_session(None):
    print("local ray answered", ray.get(ray.remote(lambda: 41).remote()) + 1)
"""


def test_a_local_ray_starts_after_this_process_talked_to_a_token_cluster(tmp_path):
    """Ray caches the auth mode and token: a driver that once joined a token cluster used to
    start its own Ray expecting a token it never made ("Failed to start GCS")."""
    import subprocess
    import sys

    env = dict(os.environ, NASBENCH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", AFTER_A_TOKEN_CLUSTER, str(tmp_path / "token")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "local ray answered 42" in done.stdout, done.stderr[-2000:]
