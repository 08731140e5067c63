"""Structured layer_dp with a params / MACs budget: the per-channel costs are what shrinking
really removes (brute force: shrink, count), the result lands within one channel of the target
(and at uniform's params when asked for its fraction), and on a tiny model the allocation is
the brute-force optimum over every allocation."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pruners
from pruners.shrink_costs import cost_model, removed_fraction
from pruners.shrink_dp import budget_target, group_distortion_curves
from pruners.structured import ChannelPlan, apply_plan, channel_groups, dependency_graph, least_important
from tests.test_pruners_structured import resnet18, tiny_cnn

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def measure(model: nn.Module, budget: str, x: torch.Tensor) -> int:
    return params(model) if budget == "params" else macs(model, x)


def shrunk_at(model: nn.Module, groups, counts, x: torch.Tensor) -> nn.Module:
    """`model` with counts[g] least important channels of each group removed (brute force)."""
    plan = ChannelPlan(groups, [least_important(g.scores, int(c)) for g, c in zip(groups, counts, strict=True)])
    return apply_plan(copy.deepcopy(model), plan, example_input=x)


def three_convs(seed: int) -> nn.Module:
    """Three coupled groups (8, 6, 5 channels), each weight between two of them: the costs
    interact, so the DP's linear prices are only an approximation here."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 10)).eval()


class Mixed(nn.Module):
    """A depthwise conv (its in and out channels are one group), a concat (the consumer's input
    is made of two groups) and a flatten of 2×2 positions into a Linear (4 inputs per channel)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 5, 3, padding=1, bias=False)
        self.mix = nn.Conv2d(11, 7, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        return self.head(self.mix(torch.cat([self.a(x), self.b(x)], 1)))


@pytest.mark.parametrize("budget", ["params", "macs"])
@pytest.mark.parametrize("make", [resnet18, lambda: Mixed().eval()], ids=["resnet18", "mixed"])
def test_per_channel_costs_equal_the_brute_force_difference_of_the_shrunk_model(budget, make):
    """For every group: what the cost model says one more channel removes = measured(model
    shrunk at x) - measured(shrunk at x + that channel), at x = 0 (the dense model) and at a
    random allocation x (where the neighbours' losses change the cost); and removed(x), which
    the prices add up to exactly, is the measured difference to the dense model."""
    model = make()
    groups = channel_groups(model, dependency_graph(model, X))
    costs = cost_model(model, groups, budget, X)
    dense = measure(model, budget, X)
    rng = np.random.default_rng(0)
    for x in (np.zeros(len(groups), np.int64), np.asarray([rng.integers(1, g.channels // 2) for g in groups])):
        base = measure(shrunk_at(model, groups, x, X), budget, X)
        assert costs.removed(x) == dense - base
        assert float(costs.prices(x) @ x) == pytest.approx(dense - base, abs=1e-6)
        marginal = costs.marginal(x)
        for g in range(len(groups)):
            one_more = x + np.eye(len(groups), dtype=np.int64)[g]
            assert marginal[g] == base - measure(shrunk_at(model, groups, one_more, X), budget, X), (
                budget, groups[g].root)
    assert len(set(costs.marginal(np.zeros(len(groups), np.int64)).tolist())) >= 3  # not one cost for all


@pytest.mark.parametrize("budget", ["params", "macs"])
def test_budget_lands_within_one_channel_of_the_target_and_at_uniforms_size(budget):
    dense = resnet18()
    kw = {"num_samples": 8, "num_amounts": 5, "budget": budget}
    small, plan = pruners.structured.shrink_with_plan(dense, "layer_dp", 0.6, example_input=X, **kw)
    costs = cost_model(dense, plan.groups, budget, X)
    target, counts = budget_target(costs, 0.6), [len(r) for r in plan.removed]
    removed = measure(dense, budget, X) - measure(small, budget, X)
    worth = costs.marginal(np.asarray(counts) - 1).max()  # the dearest channel it removed
    assert target <= removed < target + worth
    assert plan.budget == budget and plan.to_json()["budget"] == budget
    # the bench's comparison: uniform's fraction gives uniform's params (MACs), never more
    uniform, uplan = pruners.structured.shrink_with_plan(dense, "uniform", 0.5, example_input=X)
    fraction = removed_fraction(dense, uplan, budget, X)
    small = pruners.shrink(dense, "layer_dp", fraction, example_input=X, **kw)
    gap = measure(uniform, budget, X) - measure(small, budget, X)
    assert 0 <= gap < costs.marginal(np.zeros(len(plan.groups), np.int64)).max()


def minimal_allocations(costs, target: int, caps: list[int]):
    """Every allocation that removes at least `target` and would fall short by returning any
    one of its channels (the budget is met without a spare channel)."""
    eye = np.eye(len(caps), dtype=np.int64)
    for c in itertools.product(*(range(cap + 1) for cap in caps)):
        x = np.asarray(c)
        if costs.removed(x) >= target and all(x[g] == 0 or costs.removed(x - eye[g]) < target
                                              for g in range(len(caps))):
            yield c


@pytest.mark.parametrize("budget", ["params", "macs"])
def test_budget_allocation_is_the_brute_force_optimum_on_a_tiny_model(budget):
    """Every count measured (K - 1 = 120 = lcm of 8, 6 and 5): Σ D_g of the allocation equals
    the least Σ D_g over all allocations that meet the budget without a spare channel."""
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_samples": 16, "num_amounts": 121, "batch_size": 16, "budget": budget}
    checked = 0
    for seed, amount in itertools.product(range(4), (0.3, 0.5, 0.7)):
        model = three_convs(seed)
        plan = pruners.plan_channels(model, "layer_dp", amount, example_input=x[:1], data=x, **kw)
        caps = [g.channels - 1 for g in plan.groups]
        curves = [group_distortion_curves(model, [g], x, np.arange(cap + 1)[None, :], 16)[0]
                  for g, cap in zip(plan.groups, caps, strict=True)]
        costs = cost_model(model, plan.groups, budget, x[:1])
        target = budget_target(costs, amount)
        best = min(sum(curves[g][c[g]] for g in range(len(caps)))
                   for c in minimal_allocations(costs, target, caps))
        got = sum(curves[g][len(r)] for g, r in enumerate(plan.removed))
        assert got == pytest.approx(best, rel=1e-9, abs=1e-15), (seed, amount)
        checked += 1
    assert checked == 12


def test_budget_mistakes_are_one_line_errors():
    model, x = tiny_cnn(0), torch.randn(1, 1, 8, 8)
    with pytest.raises(pruners.PruneError, match="budget="):
        pruners.shrink(model, "layer_dp", 0.5, example_input=x, budget="flops")
    with pytest.raises(pruners.PruneError, match="cannot remove .* prunable params keeping min_keep=4"):
        pruners.structured.check_shrink(model, "layer_dp", 0.9, example_input=x, budget="params", min_keep=4)
    with pytest.raises(pruners.PruneError, match="budget"):
        pruners.shrink(model, "uniform", 0.5, example_input=x, budget="params")


def test_min_keep_fraction_floors_every_group():
    """min_keep=0.25: each group keeps ⌈C/4⌉ channels at least, whatever the budget asks."""
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_samples": 16, "num_amounts": 9, "batch_size": 16, "budget": "params", "min_keep": 0.25}
    plan = pruners.plan_channels(three_convs(0), "layer_dp", 0.7, example_input=x[:1], data=x, **kw)
    kept = [g.channels - len(r) for g, r in zip(plan.groups, plan.removed, strict=True)]
    assert all(k >= -(-g.channels // 4) for k, g in zip(kept, plan.groups, strict=True)), kept
    with pytest.raises(pruners.PruneError, match="at most 13"):  # 8-2 + 6-2 + 5-2 channels removable
        pruners.plan_channels(three_convs(0), "uniform", 0.75, example_input=x[:1], min_keep=0.25)
