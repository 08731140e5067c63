"""Objective kinds on a real (untrained) supernet: values, caching by arch_id, predictors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import search
import supernets
from nasbench_core.errors import UserError


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = supernets.create("resnet", preset="tiny", num_classes=3, in_chans=1)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(2)]
    ctx = search.ObjectiveContext(supernet=net, calib_loader=batches, val_loader=batches,
                                  bn_batches=1, input_shape=(1, 16, 16))
    return net, batches, ctx


def test_top1_matches_manual_accuracy_and_is_cached(setup, monkeypatch):
    net, batches, ctx = setup
    top1 = search.make_objective("top1", ctx)
    assert (top1.direction, top1.unit, top1.source) == ("max", "fraction", "measured")
    arch = net.space.smallest()
    value = top1(arch)

    net.set_active(arch)
    supernets.recalibrate_bn(net, batches, 1)
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(supernets.prepare_input(x, arch)).argmax(1) == y).sum())
                      for x, y in batches)
    assert value == correct / 16

    calls = []
    monkeypatch.setattr(supernets, "recalibrate_bn", lambda *a, **k: calls.append(a))
    assert top1(dict(reversed(list(arch.items())))) == value  # same arch_id, any key order
    assert calls == []


def test_predicted_objective_uses_fitted_predictor(setup):
    net, _, _ = setup
    archs = [net.space.sample(i) for i in range(12)]
    table = pd.DataFrame({"arch": [net.space.canonical_json(a) for a in archs],
                          "top1": [net.space.features(a).mean() for a in archs]})
    predictor = search.AccuracyPredictor(net.space, folds=3, candidates=["ridge"]).fit(table)
    ctx = search.ObjectiveContext(supernet=net, predictors={"top1_pred": predictor})
    obj = search.make_objective("top1_pred", ctx)
    assert obj.source == "predicted" and obj.direction == "max"
    assert obj(archs[0]) == pytest.approx(float(predictor.predict([archs[0]])[0]))


def test_registry_lists_every_kind_with_units():
    zc = [f"zc_{p}" for p in search.zero_cost.list_proxies()]  # tests/test_zero_cost.py
    assert [n for n in search.list_objectives() if n not in zc] == [
        "latency_ms", "latency_ms_pred", "macs", "nonzero_params", "params", "sparsity", "top1", "top1_pred"]
    with pytest.raises(UserError, match="objective 'top1' needs a supernet"):
        search.make_objectives(["top1"], search.ObjectiveContext())
    with pytest.raises(UserError, match="repeat"):
        search.make_objectives(["macs", "macs"], search.ObjectiveContext())


@pytest.mark.slow
def test_macs_and_params_share_one_extraction(setup, monkeypatch):
    net, _, _ = setup
    ctx = search.ObjectiveContext(supernet=net, input_shape=(1, 16, 16))
    macs, params = search.make_objectives(["macs", "params"], ctx)
    arch = net.space.largest()
    expected = search.subnet_costs(net, arch, input_shape=(1, 16, 16))
    assert (macs(arch), params(arch)) == (expected["macs"], expected["params"])
    assert list(ctx.cost_cache) == [net.space.arch_id(arch)]
