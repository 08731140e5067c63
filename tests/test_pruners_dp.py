"""Layer-adaptive DP: curves, the DP against brute force, exact counts, iterative growth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import pruners
from pruners.layer_dp import distortion_curves, solve_dp
from tests.test_pruners import small_cnn


def brute_force(curves, sizes, amounts, k):
    best = np.inf
    for idx in itertools.product(range(len(amounts)), repeat=len(sizes)):
        pruned = sum(round(amounts[i] * n) for i, n in zip(idx, sizes, strict=True))
        if pruned >= k:
            best = min(best, sum(curves[li, i] for li, i in enumerate(idx)))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_dp_matches_brute_force_with_exact_budget(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(x) for x in rng.integers(5, 40, size=3)]
    amounts = np.linspace(0, 1, 6)
    curves = np.cumsum(rng.random((3, 6)), axis=1) * rng.random((3, 1))
    curves[:, 0] = 0
    k = int(0.6 * sum(sizes))
    sol = solve_dp(curves, sizes, amounts, k, budget_units=sum(sizes))  # one unit per weight
    assert sol.unit == 1
    assert sol.objective == pytest.approx(brute_force(curves, sizes, amounts, k))
    assert sum(sol.counts) == k
    coarse = solve_dp(curves, sizes, amounts, k, budget_units=7)
    assert sum(coarse.counts) == k
    assert coarse.objective >= sol.objective - 1e-12  # coarse units can only cost quality


def test_caps_keep_a_minimum_per_layer_and_match_brute_force():
    rng = np.random.default_rng(7)
    sizes, amounts = [10, 30, 20], np.linspace(0, 1, 11)
    curves = np.cumsum(rng.random((3, 11)), axis=1)
    curves[:, 0] = 0
    curves[0, -1] = 0.0  # emptying layer 0 looks free to the additive model
    k = 40
    free = solve_dp(curves, sizes, amounts, k, budget_units=60)
    assert free.counts[0] == 10
    caps = [9, 29, 19]  # keep >= 1 weight per layer
    sol = solve_dp(curves, sizes, amounts, k, budget_units=60, caps=caps)
    assert sum(sol.counts) == k and all(c <= cap for c, cap in zip(sol.counts, caps, strict=True))
    best = np.inf
    for idx in itertools.product(range(11), repeat=3):
        pruned = [round(amounts[i] * n) for i, n in zip(idx, sizes, strict=True)]
        if sum(pruned) >= k and all(p <= c for p, c in zip(pruned, caps, strict=True)):
            best = min(best, sum(curves[li, i] for li, i in enumerate(idx)))
    assert sol.objective == pytest.approx(best)


def test_layer_dp_min_keep_never_empties_a_layer():
    model = small_cnn()
    masks = pruners.prune(model, "layer_dp", 0.97, example_input=torch.zeros(1, 1, 8, 8),
                          num_samples=16, num_amounts=101, min_keep=0.02)
    assert all(int(m.sum()) >= 0.02 * m.numel() for m in masks.values())


def test_curves_start_at_zero_grow_and_restore_weights():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = pruners.select_targets(model)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    amounts = np.linspace(0, 1, 11)
    mean = distortion_curves(model, targets, x, amounts)
    worst = distortion_curves(model, targets, x, amounts, worst_case=True)
    assert mean.shape == (4, 11)
    assert np.all(mean[:, 0] == 0)
    assert np.all(mean[:, -1] > mean[:, 1])
    assert np.all(worst >= mean - 1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_layer_dp_with_data_exact_and_iterative_only_grows():
    model = small_cnn()
    n = sum(t.numel for t in pruners.select_targets(model))
    data = [(torch.randn(16, 1, 8, 8), torch.zeros(16)) for _ in range(3)]
    first = pruners.prune(model, "layer_dp", 0.5, data=data, num_samples=40, num_amounts=21)
    assert sum(int((~m).sum()) for m in first.values()) == round(0.5 * n)
    second = pruners.prune(model, "layer_dp", 0.8, data=data, num_samples=40, num_amounts=21,
                           iterative_steps=3, budget_units=64)
    assert sum(int((~m).sum()) for m in second.values()) == round(0.8 * n)
    assert all(not (second[k] & ~first[k]).any() for k in first)


def test_layer_dp_needs_data_or_shape():
    with pytest.raises(pruners.PruneError, match="calibration `data` or an `example_input`"):
        pruners.prune(small_cnn(), "layer_dp", 0.5)
