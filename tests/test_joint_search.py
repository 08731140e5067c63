"""Joint architecture x sparsity search: each arch is a subnet pruned to its `sparsity`."""

from __future__ import annotations

import json

import pytest

import nasbench
from tests.test_api import tiny_search


def _joint(root, name, kind="unstructured", objectives=("top1", "nonzero_params", "params", "sparsity"),
           budget=6):
    cfg = tiny_search(root, name, list(objectives))
    return {**cfg, "budget": budget,
            "prune": {"kind": kind, "method": "global_magnitude", "sparsity": [0.0, 0.5, 0.8]}}


def _by_hand(run, arch, kind):
    """The pruned subnet built without search.joint: extract, prune, recalibrate, score."""
    import torch

    import pruners
    from nasbench.data.fixed import FixedSubset
    from nasbench.runners.config import stored_config
    from nasbench.runners.search import SearchConfig, load_supernet
    from pruners.masks import make_permanent
    from supernets.training import evaluate_arch

    cfg = stored_config(run, SearchConfig).model_copy(update={"prune": None})
    net, data, _ = load_supernet(cfg, "cpu")
    base = {k: v for k, v in arch.items() if k != "sparsity"}
    subnet = net.extract(base).eval()
    if arch["sparsity"] > 0:
        if kind == "structured":
            x = torch.zeros(1, data.in_chans, data.resolution, data.resolution)
            subnet = pruners.shrink(subnet, "global_magnitude", arch["sparsity"], example_input=x)
        else:
            pruners.prune(subnet, "global_magnitude", arch["sparsity"])
            make_permanent(subnet)
    calib, val = FixedSubset.read(run.path).loaders(data)
    top1 = evaluate_arch(subnet, base, val, recal_loader=calib, recal_batches=len(calib))
    return subnet, top1


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_every_row_is_the_subnet_pruned_to_its_sparsity(tmp_path, kind):
    run = nasbench.search(_joint(tmp_path, kind, kind), quiet=True)
    table = run.evaluations
    assert set(table["sparsity"]) <= {0.0, 0.5, 0.8} and len(set(table["sparsity"])) > 1
    for _, row in table.iterrows():
        arch = json.loads(row["arch"])
        subnet, top1 = _by_hand(run, arch, kind)
        nonzero = sum(int(p.count_nonzero()) for p in subnet.parameters())
        dense = sum(p.numel() for p in subnet.parameters())
        assert row["top1"] == top1 and row["nonzero_params"] == nonzero and row["params"] == dense
        if arch["sparsity"] > 0 and kind == "unstructured":
            assert nonzero < dense  # zeros stored in dense tensors
        if arch["sparsity"] > 0 and kind == "structured":
            unpruned, _ = _by_hand(run, {**arch, "sparsity": 0.0}, kind)
            assert dense < sum(p.numel() for p in unpruned.parameters())  # physically smaller


def test_export_writes_the_pruned_subnet(tmp_path):
    from nasbench.onnx_export import export_onnx

    run = nasbench.search(_joint(tmp_path, "x", "structured", budget=8), quiet=True)
    table = run.evaluations
    pruned = table[table["sparsity"] == 0.8].iloc[0]
    result = nasbench.export(run, arch_id=pruned["arch_id"], quiet=True)
    assert result.arch["sparsity"] == 0.8
    assert result.exported_top1 == pytest.approx(pruned["top1"], abs=1e-9)
    unpruned, _ = _by_hand(run, {**json.loads(pruned["arch"]), "sparsity": 0.0}, "structured")
    dense = export_onnx(unpruned, result.input_shape[-3:], tmp_path / "dense.onnx").onnx_path
    assert result.onnx.stat().st_size < 0.6 * dense.stat().st_size  # the shipped file is smaller


def test_joint_settings_and_the_sparsity_objective_fail_in_one_line(tmp_path, cli):
    result = cli("search", "--set", f"run.root={tmp_path}", "--set", "run.name=x",
                 "--set", "prune.method=nope", "--set", "budget=1")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "search.prune.method 'nope' is not one of the unstructured pruners: " in result.err
    result = cli("search", "--set", f"run.root={tmp_path}", "--set", "run.name=y",
                 "--set", "objectives=[params,sparsity]", "--set", "budget=1")
    assert result.code == 2
    assert result.err.strip() == ("nasbench: error: objective 'sparsity' needs a joint search: set "
                                  "prune.method and prune.sparsity")
    assert not (tmp_path / "x").exists()
