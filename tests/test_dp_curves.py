"""Distortion-curve measuring internals: incremental zeroing, amounts batched per forward,
activations kept across sweeps, magnitude order sorted once. Each is checked against the
plain computation it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pruners
import pruners.dp_curves as dp_curves
from pruners.dp_curves import CurveSampler, _Zeroed, magnitude_mask, magnitude_order
from pruners.layer_dp import distortion_curves
from tests.test_pruners_dp import Residual


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_incremental_zeroing_equals_a_fresh_mask_at_every_count(layout):
    model = Residual()
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    target = next(t for t in pruners.select_targets(model) if t.module_name == "a")
    before = target.param.detach().clone()
    zeroed = _Zeroed(target, magnitude_order(target))
    for count in (5, 40, 41, 3, 300, 300, 0, 576):  # up, down, repeated, to the whole layer
        zeroed.set(count)
        want = before * magnitude_mask(target, count)
        assert torch.equal(target.param.detach(), want), count
    zeroed.restore()
    assert torch.equal(target.param.detach(), before)
    assert target.param.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_amounts_batched_per_forward_equal_one_amount_per_forward():
    model = Residual().eval()
    targets = pruners.select_targets(model)
    x = torch.randn(37, 1, 8, 8, generator=torch.Generator().manual_seed(5))  # uneven chunks
    amounts = np.linspace(0, 1, 13)
    one = distortion_curves(model, targets, x, amounts, batch_size=10, amount_batch=1)
    many = distortion_curves(model, targets, x, amounts, batch_size=10, amount_batch=5)
    worst_one = distortion_curves(model, targets, x, amounts, batch_size=10, amount_batch=1,
                                  worst_case=True)
    worst_many = distortion_curves(model, targets, x, amounts, batch_size=64, amount_batch=13,
                                   worst_case=True)
    assert one[:, -1].min() > 0
    np.testing.assert_allclose(many, one, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(worst_many, worst_one, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_later_sweeps_reuse_the_kept_activations_and_measure_the_same(cache_bytes):
    model = Residual().eval()
    targets = pruners.select_targets(model)
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    amounts = np.linspace(0, 1, 9)
    ref = distortion_curves(model, targets, x, amounts, method="reference")
    sampler = CurveSampler(model, targets, x, amounts, batch_size=8, cache_bytes=cache_bytes)
    sampler.sweep(lambda li: [2, 8])
    after_one = sampler.dense
    assert 0 < after_one < 1  # the first sweep advances up to the last layer's cut
    sampler.sweep(lambda li: [4, 6])
    sampler.sweep(lambda li: [1, 3, 5, 7])
    assert sampler.known.all()
    assert sampler.dense == pytest.approx(after_one if cache_bytes else 3 * after_one)
    np.testing.assert_allclose(sampler.values, ref, rtol=1e-6, atol=1e-12)


def test_magnitude_order_is_sorted_once_per_layer(monkeypatch):
    model = Residual().eval()
    targets = pruners.select_targets(model)
    calls = []

    def counted(target):
        calls.append(target.name)
        return magnitude_order(target)

    monkeypatch.setattr(dp_curves, "magnitude_order", counted)
    sampler = CurveSampler(model, targets, torch.randn(6, 1, 8, 8), np.linspace(0, 1, 7))
    for ks in ([1, 2], [3], [4, 5, 6]):
        sampler.sweep(lambda li, ks=ks: ks)
    assert sorted(calls) == sorted(t.name for t in targets)


def test_a_replay_of_the_exact_curves_measures_what_the_real_run_measures():
    """The bench compares schedules by replaying stored curves: the replay must pick the same
    amounts and allocation as the adaptive run on the model, and its oracle equals the DP."""
    from nasbench.bench._pruning_dp import _Replay, schedules
    from pruners.layer_dp import dp_step
    from pruners.options import LayerDPOptions

    model = Residual().eval()
    targets = pruners.select_targets(model)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    k = round(0.7 * sum(t.numel for t in targets))
    o = LayerDPOptions(num_amounts=101, coarse_amounts=11)
    exact = dp_step(model, targets, x, k, LayerDPOptions(curves="cached"))
    real = dp_step(model, targets, x, k, o)
    replay = _Replay(exact.curves, exact.sampler)
    again = dp_step(None, targets, None, k, o, sampler=replay)
    assert np.array_equal(replay.known, real.sampler.known)
    assert again.solution.counts == real.solution.counts
    assert replay.measured == real.sampler.measured < exact.sampler.measured
    figures = schedules(exact.curves, exact.sampler, k, exact.solution)
    default = figures["default, coarse 11 uniform"]
    assert default["measured"] == real.sampler.measured
    assert all(f["objective_gap_pct"] >= 0 for f in figures.values())  # the oracle is optimal
