"""`nasbench export` and `nasbench.onnx_export.export_onnx`: verified ONNX, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from torch import nn

from nasbench.onnx_export import ExportMismatchError, export_onnx
from nasbench.runs import load_run, start_run
from search.evaluations import write_table
from supernets.space import SearchSpace
from tests.test_cli import assert_one_line_error
from tests.test_search_cli import FAST, write_config


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_export_onnx_has_dynamic_batch_and_matches(tmp_path):
    net = small_net()
    result = export_onnx(net, (1, 8, 8), tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    out = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-5)


def test_export_onnx_mismatch_is_an_error(tmp_path):
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_onnx(small_net(), (1, 8, 8), tmp_path / "m.onnx", atol=-1.0)


SPACE = SearchSpace({"a": [1, 2], "b": [3, 4]})


@pytest.fixture
def fake_search_run(tmp_path):
    """A search run with a small evaluations table (no supernet needed to pick rows)."""
    archs = [{"a": 1, "b": 3}, {"a": 2, "b": 3}, {"a": 2, "b": 4}]
    df = pd.DataFrame({
        "arch_id": [SPACE.arch_id(a) for a in archs],
        "arch": [SPACE.canonical(a) for a in archs],
        "top1": [0.5, 0.7, 0.9], "latency_ms": [1.0, 2.0, 6.0],
        "source": "measured", "device": "cpu", "seed": 0, "generation": 0, "timestamp": 0.0,
    })
    with start_run("search", {}, 0, root=tmp_path, name="r") as run:
        write_table(run.path / "evaluations.parquet", df,
                    {"directions": {"top1": "max", "latency_ms": "min"}})
    return run.path, df


def test_choose_row_picks_most_accurate_meeting_constraint(fake_search_run):
    from nasbench.runners.export import choose_row
    from search.evaluations import read_table

    path, df = fake_search_run
    table, meta = read_table(path / "evaluations.parquet")
    row = choose_row(table, meta, arch_id=None, pick=["latency_ms<=5"], objective=None)
    assert row["arch_id"] == df["arch_id"][1]
    row = choose_row(table, meta, arch_id=None, pick=["top1 >= 0.6"], objective="latency_ms")
    assert row["arch_id"] == df["arch_id"][1]  # latency is minimised
    assert choose_row(table, meta, arch_id=df["arch_id"][2], pick=[],
                      objective=None)["top1"] == 0.9


@pytest.mark.parametrize(("args", "needles"), [
    (["--pick", "params<=2e6"], ["unknown column 'params'"]),
    (["--pick", "latency_ms<=5", "--objective", "acc"], ["unknown objective 'acc'"]),
    (["--arch-id", "000000000000"], ["arch_id '000000000000' is not in this run"]),
    (["--pick", "latency_ms<=0.5"], ["no evaluated arch meets latency_ms <= 0.5"]),
    ([], ["exactly one of --arch-id"]),
])
def test_export_mistakes_are_one_line_errors(cli, fake_search_run, args, needles):
    path, _ = fake_search_run
    assert_one_line_error(cli("export", str(path), *args), *needles)


def test_export_of_a_non_search_run_is_an_error(cli, tmp_path):
    with start_run("train", {}, 0, root=tmp_path, name="t") as run:
        pass
    assert_one_line_error(cli("export", str(run.path), "--arch-id", "x"), "not a search run")


@pytest.mark.slow
def test_search_then_export_roundtrip(cli, tmp_path):
    assert cli("search", write_config(tmp_path), *FAST, "--quiet").code == 0
    run = load_run(tmp_path / "results" / "s")
    result = cli("export", str(run.path), "--pick", "params <= 1e9")
    assert result.code == 0, result.err
    assert "onnxruntime max abs diff" in result.out
    best = run.evaluations.sort_values("top1", ascending=False).iloc[0]
    # Ties on top1 are broken by row order, like idxmax.
    picked = json.loads(next((run.path / "subnets").glob("*.json")).read_text())
    assert picked["metrics"]["top1"] == best["top1"]
    aid = next((run.path / "subnets").glob("*.onnx")).stem
    assert (run.path / "subnets" / f"{aid}.safetensors").exists()
    manifest = load_run(run.path).manifest
    assert manifest["exports"][aid]["onnx"] == f"subnets/{aid}.onnx"
    assert manifest["exports"][aid]["max_abs_diff"] <= 1e-4

    # The exported subnet is a model `nasbench prune` takes as it is.
    from nasbench.runners.export import load_exported_subnet

    subnet = load_exported_subnet(run.path, aid)
    session = ort.InferenceSession(str(run.path / "subnets" / f"{aid}.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(2, *picked["input_shape"][1:])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0],
                               subnet(x).detach().numpy(), atol=1e-4)
    prune_cfg = tmp_path / "prune.yaml"
    prune_cfg.write_text(json.dumps({
        "run": {"name": "p", "root": str(tmp_path / "results")},
        "data": {"name": "digits", "batch_size": 16, "limit": 96},
        "model": {"source": "export", "run": str(run.path), "arch_id": aid},
        "prune": {"method": "global_magnitude", "sparsity": 0.5}, "finetune": {"epochs": 1},
    }))
    result = cli("prune", str(prune_cfg), "--quiet")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "results" / "p" / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert summary["onnx_max_abs_diff"] <= 1e-4


def test_prune_of_an_unexported_arch_is_a_one_line_error(cli, fake_search_run, tmp_path):
    path, df = fake_search_run
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(json.dumps({"model": {"source": "export", "run": str(path),
                                         "arch_id": df["arch_id"][0]}}))
    assert_one_line_error(cli("prune", str(cfg)), "has no export of arch", "nasbench export")
    cfg.write_text(json.dumps({"model": {"source": "export"}}))
    assert_one_line_error(cli("prune", str(cfg)), "needs model.run and model.arch_id")
