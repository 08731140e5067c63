"""`nasbench train`: a run directory with metrics and checkpoints, exact resume, clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

FAST = [
    "--set", "data.limit=64", "--set", "data.batch_size=16",
    "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=2",
    "--set", "train.num_random=1", "--set", "train.bn_recal_batches=1",
    "--set", "train.val_max_batches=1", "--set", "train.warmup_epochs=0.5",
    "--set", "device=cpu",
]



@pytest.fixture
def config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        f"run: {{name: t, root: {tmp_path / 'results'}}}\n"
        "data: {name: digits}\n"
        "supernet: {family: mbv3, preset: tiny}\n"
        "train: {lr: 0.05}\n"
    )
    return path


def test_train_writes_a_run_with_metrics_and_checkpoints(cli, config, tmp_path):
    result = cli("train", str(config), *FAST, "--quiet")
    assert result.code == 0, result.err
    run = tmp_path / "results" / "t"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["supernet"]["name"] == "mbv3" and manifest["supernet"]["in_chans"] == 1
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    for column in ("loss_largest", "loss_smallest", "loss_random", "val_acc_smallest",
                   "val_acc_largest", "lr", "images_per_s"):
        assert column in metrics.columns, column
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"epoch_000{e}{s}" for e in (1, 2) for s in (".json", ".optim.safetensors", ".safetensors")
    ]


def test_resume_after_a_crash_reproduces_the_uninterrupted_weights(cli, config, tmp_path):
    assert cli("train", str(config), *FAST, "--quiet").code == 0
    run = tmp_path / "results" / "t"
    ckpts = run / "checkpoints"
    reference = load_file(ckpts / "epoch_0002.safetensors")
    # Make it look like the process died during epoch 2: no epoch-2 checkpoint or row.
    for suffix in (".json", ".optim.safetensors", ".safetensors"):
        (ckpts / f"epoch_0002{suffix}").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    pd.read_csv(run / "metrics.csv").iloc[:1].to_csv(run / "metrics.csv", index=False)

    result = cli("train", "--resume", str(run), "--quiet")
    assert result.code == 0, result.err
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2]
    resumed = load_file(ckpts / "epoch_0002.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "unknown key 'train.lrr'; allowed: epochs, lr"),
        ("train.optimizer=lamb", "train.optimizer: expected one of ('sgd', 'adamw'), got 'lamb'"),
        ("supernet.family=nope", "unknown supernet family 'nope'"),
        ("device=tpu", "key 'device': expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(cli, config, override, message):
    result = cli("train", str(config), "--set", override)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
