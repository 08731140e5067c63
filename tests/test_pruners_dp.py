"""Layer-adaptive DP: curves (cached/adaptive against the reference computation), the DP against
brute force, the allocation layer_dp really uses, FLOPs budget, iterative fine-tuning, layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import pruners
from pruners.cached_forward import trace_stages
from pruners.dp_curves import CurveSampler
from pruners.layer_dp import distortion_curves, layer_macs, solve_dp
from tests.test_pruners import small_cnn


class Residual(nn.Module):
    """Two conv blocks with a skip: a cut inside the block must cache the skip too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        x = torch.relu(self.bn(y) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


class Branchy(Residual):
    """Data-dependent control flow: torch.fx cannot trace it, so curves run the whole model."""

    def forward(self, x):
        if x.sum() > -1e9:
            return super().forward(x)
        return x


def _pruned_counts(masks) -> list[int]:
    return [int((~m).sum()) for m in masks.values()]


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


def _reference_curves(model, targets, x, amounts):
    return distortion_curves(model, targets, x, amounts, method="reference")


@pytest.mark.parametrize("model_fn", [Residual, Branchy])
def test_cached_curves_equal_the_reference_computation(model_fn):
    model = model_fn().eval()
    targets = pruners.select_targets(model)
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    amounts = np.linspace(0, 1, 11)
    ref = _reference_curves(model, targets, x, amounts)
    fast = distortion_curves(model, targets, x, amounts, method="cached", batch_size=16,
                             amount_batch=3)
    assert (trace_stages(model, targets, x[:4]) is None) == (model_fn is Branchy)
    assert ref[:, -1].min() > 0
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-12)


def test_adaptive_measures_less_and_its_points_are_reference_values():
    model = Residual().eval()
    targets = pruners.select_targets(model)
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    amounts = np.linspace(0, 1, 21)
    ref = _reference_curves(model, targets, x, amounts)
    sampler = CurveSampler(model, targets, x, amounts, method="cached")
    coarse = sampler.coarse(5)
    sampler.sweep(lambda li: coarse, refine=lambda li: sampler.bends(li, 1e-3 * ref.max()))
    known = sampler.known
    assert known.sum() < known.size
    np.testing.assert_allclose(sampler.values[known], ref[known], rtol=1e-6, atol=1e-12)
    assert np.abs(sampler.curves() - ref).max() < 0.1 * ref.max()  # PCHIP in between


def _brute_force_counts(curves, sizes, amounts, k):
    best, best_idx = np.inf, None
    for idx in itertools.product(range(len(amounts)), repeat=len(sizes)):
        pruned = sum(round(amounts[i] * n) for i, n in zip(idx, sizes, strict=True))
        value = sum(curves[li, i] for li, i in enumerate(idx))
        if pruned >= k and value < best:
            best, best_idx = value, idx
    return best, best_idx


@pytest.mark.parametrize("curves", ["reference", "adaptive"])
def test_layer_dp_prunes_the_brute_force_optimum_of_its_measured_curves(curves):
    """The allocation layer_dp applies is the exact optimum over the reference curves: a
    uniform (or any other) allocation inside layer_dp fails this."""
    model = small_cnn()
    targets = pruners.select_targets(model)
    sizes = [t.numel for t in targets]
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    amounts = np.linspace(0, 1, 6)
    ref = _reference_curves(model, targets, x, amounts)
    k = round(0.6 * sum(sizes))
    best, idx = _brute_force_counts(ref, sizes, amounts, k)
    masks = pruners.prune(model, "layer_dp", 0.6, data=x, num_samples=32, num_amounts=6,
                          budget_units=sum(sizes), curves=curves, coarse_amounts=3)
    counts = _pruned_counts(masks)
    assert sum(counts) == k
    grid = [round(amounts[i] * n) for i, n in zip(idx, sizes, strict=True)]
    assert all(c <= g for c, g in zip(counts, grid, strict=True))  # grid pick minus hand-back
    assert sum(g - c for c, g in zip(counts, grid, strict=True)) == sum(grid) - k
    uniform = [round(0.6 * n) for n in sizes]
    assert counts != uniform


def test_layer_macs_match_the_conv_formula_and_flop_counter():
    model = small_cnn()
    targets = pruners.select_targets(model)
    macs = layer_macs(model, targets, torch.zeros(3, 1, 8, 8))
    # conv: each weight is used once per output position (8x8); linear: once per sample
    assert macs == [t.numel * 64 for t in targets[:2]] + [t.numel for t in targets[2:]]


def test_flops_budget_removes_the_asked_mac_fraction_and_prefers_cheap_layers():
    model = small_cnn()
    example = torch.zeros(1, 1, 8, 8)
    masks = pruners.prune(model, "layer_dp", 0.5, example_input=example, num_samples=16,
                          num_amounts=21, budget="flops")
    report = pruners.sparsity_report(model, example)
    rows = report[report["layer"].isin(list(masks))]
    removed = float((rows["flops"] - rows["kept_flops"]).sum()) / float(rows["flops"].sum())
    per_weight = (rows["flops"] / rows["params"]).to_numpy()
    assert 0.5 <= removed < 0.5 + per_weight.max() / float(rows["flops"].sum())
    params = pruners.prune(small_cnn(), "layer_dp", 0.5, example_input=example, num_samples=16,
                           num_amounts=21)
    assert _pruned_counts(masks) != _pruned_counts(params)


def test_iterative_fine_tunes_between_steps_with_masks_kept():
    model = small_cnn()
    calls = []

    def finetune(m, span, keep_masks):
        calls.append(span)
        for _ in range(span.steps(1)):
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.01)
            keep_masks()
            calls.append("step")

    masks = pruners.prune(model, "layer_dp", 0.8, example_input=torch.zeros(1, 1, 8, 8),
                          num_samples=16, num_amounts=11, iterative_steps=3, finetune_steps=2,
                          finetune=finetune)
    two = pruners.Span(2, "it")
    assert calls == [two, "step", "step", two, "step", "step"]  # finetune_steps between DP steps
    n = sum(m.numel() for m in masks.values())
    assert sum(_pruned_counts(masks)) == round(0.8 * n)
    with pytest.raises(pruners.PruneError, match="needs a `finetune`"):
        pruners.prune(small_cnn(), "layer_dp", 0.5, example_input=torch.zeros(1, 1, 8, 8),
                      iterative_steps=2, finetune_steps=1)


@pytest.mark.parametrize("layout", ["channels_last", "float64"])
def test_layer_dp_on_channels_last_and_float64(layout):
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = pruners.prune(small_cnn(), "layer_dp", 0.5, data=x, num_amounts=11)
    model = small_cnn()
    model = model.to(memory_format=torch.channels_last) if layout == "channels_last" else model.double()
    masks = pruners.prune(model, "layer_dp", 0.5, data=x, num_amounts=11)
    assert _pruned_counts(masks) == _pruned_counts(plain)
    assert all(torch.equal(masks[k], plain[k]) for k in plain)


def test_progress_reports_layer_i_of_L():
    model = small_cnn()
    targets = pruners.select_targets(model)
    seen = []
    distortion_curves(model, targets, torch.randn(8, 1, 8, 8), np.linspace(0, 1, 5),
                      on_progress=lambda i, n, label: seen.append((i, n, label)))
    assert [(i, n) for i, n, _ in seen] == [(i, 4) for i in range(1, 5)]
    assert "layer 4/4" in seen[-1][2]


class _Table(CurveSampler):
    """A sampler whose 'measurements' read a fixed table: dp_step's refinement, no forwards."""

    table: np.ndarray

    def __init__(self, model, targets, inputs, amounts, **kw):
        self.targets, self.amounts = list(targets), np.asarray(amounts)
        self.values = np.zeros(self.table.shape)
        self.known = np.zeros(self.table.shape, dtype=bool)
        self.known[:, 0] = True
        self.floors, self.measured, self.forwards, self.sweeps = [0] * len(targets), 0, 0.0, 0
        self.stages = None

    def sweep(self, requests, refine=None, label=""):
        for li in range(len(self.targets)):
            self.measure(li, requests(li), [])
            while refine is not None and (more := [k for k in refine(li) if not self.known[li, k]]):
                self.measure(li, more, [])

    def measure(self, li, idxs, state):
        idxs = [k for k in idxs if not self.known[li, k]]
        self.values[li, idxs] = self.table[li, idxs]
        self.known[li, idxs] = True
        self.measured += len(idxs)


@pytest.mark.parametrize("seed", range(6))
def test_adaptive_refinement_finds_the_exact_dp_optimum_of_rugged_curves(seed, monkeypatch):
    """Growing curves with jumps and plateaus (as random-init nets give): the adaptive loop
    measures part of the grid, yet its DP pick is the exact optimum over the full table."""
    from types import SimpleNamespace

    import pruners.layer_dp as layer_dp_mod
    from pruners.options import LayerDPOptions

    rng = np.random.default_rng(seed)
    L, K = 6, 41
    steps = rng.random((L, K)) ** 4 * (rng.random((L, K)) < 0.5)  # sparse jumps: not convex
    table = np.cumsum(steps, axis=1) * rng.random((L, 1)) * 10
    table[:, 0] = 0
    monkeypatch.setattr(_Table, "table", table, raising=False)
    monkeypatch.setattr(layer_dp_mod, "CurveSampler", _Table)
    sizes = [int(n) for n in rng.integers(50, 400, size=L)]
    targets = [SimpleNamespace(numel=n, mask=None, name=f"l{i}") for i, n in enumerate(sizes)]
    k = round(0.6 * sum(sizes))
    step = layer_dp_mod.dp_step(None, targets, None, k, LayerDPOptions(num_amounts=K, coarse_amounts=5))
    exact = solve_dp(table, sizes, np.linspace(0, 1, K), k)
    assert step.sampler.measured < L * (K - 1)
    assert step.solution.objective == pytest.approx(exact.objective)


def test_layer_dp_on_a_training_bn_model_measures_in_eval_and_restores_train_mode():
    model = Residual().train()  # one-sample BN batches in train mode would raise
    masks = pruners.prune(model, "layer_dp", 0.5, example_input=torch.zeros(1, 1, 8, 8),
                          num_samples=8, num_amounts=11, budget="flops")
    assert model.training and all(m.training for m in model.modules())
    assert len(masks) == 4
