"""`nasbench prune`: a real run end to end, and user mistakes as one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

CONFIG = """
run: {{name: p, root: {root}}}
data: {{name: digits, resolution: 16, channels: 1, batch_size: 64, limit: 128}}
model: {{source: timm, name: test_resnet}}
prune: {{method: {method}, sparsity: 0.6}}
finetune: {{epochs: 1}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["global_magnitude", "layer_dp"])
def test_prune_run_writes_masks_report_metrics_onnx(cli, tmp_path, method):
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "results", method=method))
    extra = ["--set", "prune.kwargs.num_samples=32", "--set", "prune.kwargs.num_amounts=11"]
    res = cli("prune", str(cfg), "--quiet", *(extra if method == "layer_dp" else []))
    assert res.code == 0, res.err
    run = tmp_path / "results" / "p"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert summary["onnx_max_abs_diff"] < 1e-4
    report = pd.read_parquet(run / "sparsity.parquet")
    assert report["layer"].iloc[-1] == "__global__"
    assert report["sparsity"].iloc[-1] == pytest.approx(0.6, abs=1e-4)
    assert (run / "masks.safetensors").exists() and (run / "pruned.onnx").exists()
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["stage"]) == ["dense", "pruned", "finetuned"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.sparsity=1.0", "prune.sparsity"),
        ("prune.method=magic", "unknown pruning method 'magic'"),
        ("model.name=no_such_net", "model.name='no_such_net'"),
        ("prune.kwargs.seed=1", "prune.kwargs: pruning method 'uniform' has no option 'seed'; options: (none)"),
        (["prune.method=lottery", "prune.kwargs.fraction=1.5"],
         "prune.kwargs: pruning method 'lottery': fraction=1.5: Input should be less than 1"),
        (["prune.method=lottery", "prune.kwargs.train_fn=x"],
         "prune.kwargs.train_fn: 'lottery' gets 'train_fn' from the runner, not from a config"),
        (["prune.method=layer_dp", "prune.kwargs.num_samples=0"],
         "num_samples=0: Input should be greater than or equal to 1"),
        # checked on the built model, still before training and the run directory
        ("prune.kwargs.include=[no_such_layer]", "include pattern 'no_such_layer' matches no prunable layer"),
        ("prune.kwargs.include=conv1", "include='conv1' must be a list"),
        (["prune.method=global_magnitude", "prune.kwargs.min_keep=1000000"], "min_keep keeps"),
        (["prune.method=uniform_plus", "prune.sparsity=0.999", "prune.kwargs.last_keep=1.0"],
         "uniform_plus keeps the first (conv) layer dense, the last layer at >= 100%"),
        (["prune.method=gradual_magnitude", "prune.kwargs.finetune_steps=3epochs"],
         "finetune_steps='3epochs': finetune_steps '3epochs' is not a step count"),
    ],
)
def test_prune_user_errors_exit_2_with_one_line(cli, tmp_path, override, message):
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "results", method="uniform"))
    sets = [arg for item in ([override] if isinstance(override, str) else override) for arg in ("--set", item)]
    res = cli("prune", str(cfg), *sets)
    assert res.code == 2
    assert message in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()  # refused before any run directory


def test_lottery_through_the_runner_gets_its_declared_needs(tmp_path):
    """The runner supplies what the lottery entry declares: a train_fn (it trains between
    levels), an out_dir (its per-level state, for resume) and on_level (a metrics row per level)."""
    import nasbench

    run = nasbench.prune({"run": {"name": "lt", "root": tmp_path},
                          "data": {"name": "digits", "resolution": 16, "channels": 1, "limit": 128},
                          "model": {"source": "timm", "name": "test_resnet"},
                          "prune": {"method": "lottery", "sparsity": 0.35,
                                    "kwargs": {"fraction": 0.2, "train": "2it", "rewind": "1it"}},
                          "finetune": {"epochs": 0}, "onnx": False}, quiet=True)
    stages = list(run.metrics["stage"])
    assert stages == ["dense", "level_0", "level_1", "level_2", "pruned"]
    assert run.manifest["summary"]["sparsity"] == pytest.approx(0.35, abs=1e-3)
    assert sorted(p.name for p in (run.path / "lottery").iterdir())  # its resumable state lives in the run
