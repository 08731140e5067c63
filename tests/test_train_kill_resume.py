"""A `nasbench train` run killed at any moment resumes to the uninterrupted result: mid-epoch
(a real SIGKILL after a step checkpoint) and between a checkpoint and its metrics row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import nasbench
from nasbench.runs.store import Run
from supernets.checkpoint import latest_checkpoint

DETERMINISTIC = ["epoch", "step", "lr", "loss_largest", "loss_smallest", "loss_random",
                 "val_acc_smallest", "val_acc_largest"]


def tiny(root, name: str, **train) -> dict:
    return {
        "run": {"name": name, "root": str(root), "seed": 0},
        "data": {"name": "digits", "limit": 256, "batch_size": 16},
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "train": {"epochs": 3, "lr": 0.05, "warmup_epochs": 0.5, "num_random": 1,
                  "bn_recal_batches": 1, "val_max_batches": 1, "optimizer": "adamw", **train},
        "device": "cpu",
    }


def same_weights(a_stem, b_stem) -> None:
    a, b = load_file(f"{a_stem}.safetensors"), load_file(f"{b_stem}.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


class Killed(BaseException):
    pass


def test_a_crash_between_a_checkpoint_and_its_metrics_row_loses_no_row(tmp_path, monkeypatch):
    reference = nasbench.train(tiny(tmp_path, "ref", max_steps_per_epoch=3), quiet=True)
    cfg = tiny(tmp_path, "crash", max_steps_per_epoch=3)
    log_metrics = Run.log_metrics

    def dies_before_row_two(self, row):
        if row["epoch"] == 2:  # epoch 2's checkpoint is on disk, its row not yet
            raise Killed
        log_metrics(self, row)

    monkeypatch.setattr(Run, "log_metrics", dies_before_row_two)
    with pytest.raises(Killed):
        nasbench.train(cfg, quiet=True)
    monkeypatch.setattr(Run, "log_metrics", log_metrics)
    run_dir = tmp_path / "crash"
    assert latest_checkpoint(run_dir / "checkpoints").name == "epoch_0002"
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [1]

    on_disk = []  # metrics.csv as the resumed run logs its first row: rebuilt, then appended
    resumed = nasbench.train(cfg, resume=True, quiet=True, on_metrics=lambda row: on_disk.append(
        list(pd.read_csv(run_dir / "metrics.csv")["epoch"])))
    assert on_disk == [[1, 2, 3]]
    metrics = pd.read_csv(resumed.path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(metrics[DETERMINISTIC], reference.metrics[DETERMINISTIC])
    same_weights(reference.path / "checkpoints" / "epoch_0003",
                 resumed.path / "checkpoints" / "epoch_0003")


@pytest.mark.slow
def test_nasbench_train_sigkilled_mid_epoch_resumes_bitwise(tmp_path, cli, nasbench_exe):
    """16 steps per epoch, a checkpoint every 5: the process is SIGKILLed as soon as a step
    checkpoint exists, then `nasbench train --resume` finishes it."""
    train = {"checkpoint_every": 5}
    configs = {}
    for name in ("ref", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(json.dumps(tiny(tmp_path / "results", name, **train)))
    run_dir = tmp_path / "results" / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*nasbench_exe, "train", str(configs["killed"]), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not list((run_dir / "checkpoints").glob("epoch_*_step_*.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no step checkpoint within 180 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    stem = latest_checkpoint(run_dir / "checkpoints")
    assert "_step_" in stem.name, f"killed too late: the newest checkpoint is {stem.name}"

    resumed = cli("train", "--resume", str(run_dir), "--quiet")
    assert resumed.code == 0, resumed.err
    assert cli("train", str(configs["ref"]), "--quiet").code == 0
    ref_dir = tmp_path / "results" / "ref"
    same_weights(ref_dir / "checkpoints" / "epoch_0003", run_dir / "checkpoints" / "epoch_0003")
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv")[DETERMINISTIC],
                                  pd.read_csv(ref_dir / "metrics.csv")[DETERMINISTIC])
