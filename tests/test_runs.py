"""Run store: manifest lifecycle, atomic writes, resume, load_run, and a kill mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nasbench.runs import list_runs, load_run, start_run
from nasbench_core.errors import RunError


def test_completed_run_has_manifest_config_metrics(tmp_path):
    with start_run("train", {"lr": 0.1}, seed=3, root=tmp_path, name="r1") as run:
        run.log_metrics({"epoch": 1, "loss": 2.0})
        run.log_metrics({"epoch": 2, "loss": 1.0, "acc": 50.0})
        run.write_table("evaluations", pd.DataFrame({"arch_id": ["a"], "top1": [1.0]}),
                        metadata={"directions": "max"})
    loaded = load_run(tmp_path / "r1")
    m = loaded.manifest
    assert m["status"] == "completed" and m["seed"] == 3 and m["command"] == "train"
    assert m["config"] == {"lr": 0.1} and m["ended"] and m["versions"]["torch"]
    assert (tmp_path / "r1" / "config.yaml").read_text().strip() == "lr: 0.1"
    assert list(loaded.metrics.columns) == ["epoch", "loss", "acc"] and len(loaded.metrics) == 2
    assert loaded.evaluations.to_dict("list") == {"arch_id": ["a"], "top1": [1.0]}
    assert loaded.table_metadata("evaluations")["directions"] == "max"
    assert loaded.pareto.empty
    assert not list((tmp_path / "r1").rglob("*.tmp"))


def test_failed_run_records_error(tmp_path):
    with pytest.raises(ValueError), start_run("train", {}, seed=0, root=tmp_path, name="bad"):
        raise ValueError("boom")
    manifest = load_run(tmp_path / "bad").manifest
    assert manifest["status"] == "failed" and "boom" in manifest["error"]


def test_resume_appends_and_completes(tmp_path):
    with pytest.raises(KeyboardInterrupt), start_run("train", {}, 0, root=tmp_path, name="r") as run:
        run.log_metrics({"epoch": 1})
        raise KeyboardInterrupt
    assert load_run(tmp_path / "r").manifest["error"] == "interrupted"
    with start_run("train", {}, 0, resume=tmp_path / "r") as run:
        run.log_metrics({"epoch": 2})
    resumed = load_run(tmp_path / "r")
    assert resumed.status == "completed" and len(resumed.manifest["resumes"]) == 1
    assert resumed.metrics["epoch"].tolist() == [1, 2]


def test_resume_errors(tmp_path):
    with start_run("train", {}, 0, root=tmp_path, name="done"):
        pass
    with pytest.raises(RunError, match="already completed"), start_run("train", {}, 0, resume=tmp_path / "done"):
        pass
    with pytest.raises(RunError, match="is a `train` run"), start_run("search", {}, 0, resume=tmp_path / "done"):
        pass
    with pytest.raises(RunError, match="already exists"), start_run("train", {}, 0, root=tmp_path, name="done"):
        pass
    with pytest.raises(RunError, match="run not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no manifest.json"):
        load_run(tmp_path / "empty")


def test_list_runs_and_load_by_name(tmp_path):
    for name in ("a", "b"):
        with start_run("train", {}, 0, root=tmp_path, name=name):
            pass
    table = list_runs(tmp_path)
    assert sorted(table["run"]) == ["a", "b"] and set(table["status"]) == {"completed"}
    assert load_run("a", root=tmp_path).name == "a"


def test_load_run_is_exported_at_top_level():
    import nasbench

    assert nasbench.load_run is load_run


SLOW_RUN = """
import sys, time
from nasbench.runs import start_run
with start_run("train", {}, 0, root=sys.argv[1], name="victim") as run:
    for step in range(10_000):
        run.log_metrics({"step": step, "loss": 1.0 / (step + 1)})
        run.write_table("evaluations", __import__("pandas").DataFrame({"step": list(range(step + 1))}))
        time.sleep(0.002)
"""


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, "running"), (signal.SIGTERM, "failed")])
def test_killed_run_leaves_no_partial_files(tmp_path, sig, status):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(tmp_path)], cwd=Path(__file__).parents[1])
    metrics = tmp_path / "victim" / "metrics.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 200):
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    run_dir = tmp_path / "victim"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == status
    frame = pd.read_csv(run_dir / "metrics.csv")
    assert frame["step"].tolist() == list(range(len(frame)))
    assert len(pd.read_parquet(run_dir / "evaluations.parquet")) >= 1
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    # SIGKILL can land between mkstemp and rename: a hidden temp file may remain, but never under a real name
    assert all(p.name.startswith(".") for p in leftovers)


def test_seed_everything_repeats_results():
    import torch

    from nasbench_core.seeding import seed_everything

    def draw():
        seed_everything(11)
        layer = torch.nn.Linear(4, 3)
        return torch.cat([layer.weight.flatten(), torch.rand(3)])

    assert torch.equal(draw(), draw())


def test_a_resume_removes_the_temp_files_a_kill_left_and_nothing_else(tmp_path):
    """Ours (`.NAME.*.tmp`) and safetensors' own Rust temp files (`.tmpXXXXXX`) go; other hidden
    files (the lock) and look-alikes that are not temp files stay."""
    with pytest.raises(KeyboardInterrupt), start_run("train", {}, 0, root=tmp_path, name="r") as run:
        raise KeyboardInterrupt
    stale = [run.path / ".epoch_0001.safetensors.abc123.tmp", run.path / "ckpt" / ".tmpPZFaLw"]
    kept = [run.path / ".tmpshort", run.path / "ckpt" / ".tmpTooLong12", run.path / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    with start_run("train", {}, 0, resume=run.path):
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
