"""`nasbench search`: run layout, resume without re-evaluation, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasbench.runs import load_run
from search.evaluations import read_table
from tests.test_cli import assert_one_line_error

FAST = ["--set", "data.limit=96", "--set", "data.batch_size=16", "--set", "evaluation.bn_batches=1",
        "--set", "evaluation.val_batches=1"]



def write_config(tmp_path, **extra) -> str:
    body = {
        "run": {"name": "s", "root": str(tmp_path / "results"), "seed": 0},
        "supernet": {"family": "resnet", "preset": "tiny"},
        "data": {"name": "digits", "resolution": 16},
        "objectives": ["top1", "params"],
        "optimizer": {"name": "nsga2", "settings": {"pop_size": 4}},
        "budget": 6,
        **extra,
    }
    path = tmp_path / "search.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return str(path)


@pytest.mark.slow
def test_search_writes_run_and_resume_extends_without_reevaluating(cli, tmp_path):
    cfg = write_config(tmp_path, constraints=["params <= 60000"])
    result = cli("search", cfg, *FAST, "--quiet")
    assert result.code == 0, result.err
    run = load_run(tmp_path / "results" / "s")
    for name in ["evaluations.parquet", "pareto.parquet", "pareto.png", "config.yaml"]:
        assert (run.path / name).exists(), name
    df, meta = read_table(run.path / "evaluations.parquet")
    assert len(df) == 6 and df["arch_id"].is_unique
    assert meta["directions"] == {"top1": "max", "params": "min"}
    assert run.manifest["supernet"]["trained"] is False and run.status == "completed"
    front = run.pareto
    assert (front["params"] <= 60000).all() and len(front) >= 1

    # A completed run cannot be resumed; a run killed mid-way can, and keeps its rows.
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["status"] = "failed"
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    result = cli("search", "--resume", str(run.path), "--set", "budget=9", *FAST, "--quiet")
    assert result.code == 0, result.err
    df2, _ = read_table(run.path / "evaluations.parquet")
    assert len(df2) == 9 and df2["arch_id"].is_unique
    assert df2.head(6)["timestamp"].tolist() == df["timestamp"].tolist()  # untouched rows
    assert np.isfinite(df2[["top1", "params"]].to_numpy()).all()


@pytest.mark.parametrize(("extra", "needles"), [
    ({"objectives": ["top1", "acc"]}, ["unknown objective 'acc'"]),
    ({"constraints": ["flops <= 5"]}, ["unknown column 'flops'"]),
    ({"constraints": ["params = 5"]}, ["not of the form"]),
    ({"optimizer": {"name": "cmaes"}}, ["unknown optimizer 'cmaes'"]),
    ({"optimizer": {"name": "nsga2", "settings": {"popsize": 3}}}, ["no setting 'popsize'"]),
    ({"supernet": {"family": "mbv3", "run": "x"}}, ["exactly one of supernet.run"]),
    ({"objectives": ["top1", "latency_ms"], "latency": {"thread": 1}},
     ["'latency': unknown setting 'thread'"]),
])
def test_config_mistakes_are_one_line_errors(cli, tmp_path, extra, needles):
    result = cli("search", write_config(tmp_path, **extra))
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "results" / "s").exists()  # failed before creating a run


def test_missing_checkpoint_is_one_line_error(cli, tmp_path):
    result = cli("search", write_config(tmp_path, supernet={"run": str(tmp_path / "nope")}))
    assert_one_line_error(result, "nope")
