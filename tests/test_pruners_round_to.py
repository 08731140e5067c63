"""Structured pruning with `round_to`: every pruned group keeps a multiple of round_to channels
(hypothesis over random models, amounts and methods), the totals are the closest the grid
allows (brute force over every rounding / every grid allocation), the DP's rounded allocation
is the brute-force optimum of its curves, params/MACs budgets are still met, the shrunk model
equals the masked model, and Torch-Pruning's own `round_to` is the oracle for uniform."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch_pruning as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pruners
import supernets
from pruners.round_to import closest_total, min_by_total, removal_grid, round_counts
from pruners.shrink_costs import cost_model
from pruners.shrink_dp import budget_target, group_distortion_curves
from pruners.structured import ChannelPlan, apply_plan, keep_count, least_important
from tests.test_pruners_shrink_budget import three_convs
from tests.test_pruners_structured import CONFIG, X, resnet18, zero_plan

METHODS = ("uniform", "global_magnitude", "layer_dp")
DP_KW = {"num_samples": 4, "num_amounts": 5, "batch_size": 4}


def kw(method: str) -> dict:
    return DP_KW if method == "layer_dp" else {}


def kept(plan: ChannelPlan) -> list[int]:
    return [g.channels - len(r) for g, r in zip(plan.groups, plan.removed, strict=True)]


def on_grid(plan: ChannelPlan, r: int, min_keep: int = 1) -> bool:
    """Each group untouched, or keeping a multiple of r that is >= r and >= min_keep."""
    return all(k == g.channels or (k % r == 0 and k >= max(r, min_keep))
               for k, g in zip(kept(plan), plan.groups, strict=True))


# -- the grid and the exact allocations over it ------------------------------------------------

def test_removal_grid_by_hand():
    assert removal_grid(30, 1, 8).tolist() == [0, 6, 14, 22]  # keeps 30, 24, 16, 8
    assert removal_grid(32, 1, 8).tolist() == [0, 8, 16, 24]
    assert removal_grid(32, 9, 8).tolist() == [0, 8, 16]  # min_keep 9: at least 16 kept
    assert removal_grid(7, 1, 8).tolist() == [0]  # smaller than round_to: stays whole
    assert removal_grid(8, 1, 8).tolist() == [0]  # its only multiple is itself
    assert removal_grid(5, 2, None).tolist() == [0, 1, 2, 3]  # no rounding: any count to the cap


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_round_counts_is_the_brute_force_best_rounding(data):
    """Over every way of rounding each count down or up to its grid: the total closest to the
    target (ties: the smaller), then the least squared change."""
    n = data.draw(st.integers(1, 5))
    r = data.draw(st.integers(1, 6))
    grids = [removal_grid(data.draw(st.integers(1, 30)), data.draw(st.integers(1, 4)), r) for _ in range(n)]
    counts = [data.draw(st.integers(0, int(g[-1]))) for g in grids]
    target = data.draw(st.integers(0, sum(counts) + 5))
    got = round_counts(counts, grids, target)
    options = []
    for c, g in zip(counts, grids, strict=True):
        below, above = g[g <= c].max(), g[g >= c].min() if (g >= c).any() else g[-1]
        options.append(sorted({int(below), int(above)}))
    best = min(itertools.product(*options),
               key=lambda x: (abs(sum(x) - target), sum(x), sum((a - c) ** 2 for a, c in zip(x, counts, strict=True))))
    assert (abs(sum(got) - target), sum(got)) == (abs(sum(best) - target), sum(best))
    assert sum((a - c) ** 2 for a, c in zip(got, counts, strict=True)) == pytest.approx(
        sum((a - c) ** 2 for a, c in zip(best, counts, strict=True)))
    assert all(c in o for c, o in zip(got, options, strict=True))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.data())
def test_min_by_total_is_the_brute_force_minimum_at_every_total(data):
    n = data.draw(st.integers(1, 4))
    costs = [np.asarray(sorted(set(data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=4)))))
             for _ in range(n)]
    values = [np.asarray(data.draw(st.lists(st.floats(0, 10), min_size=len(c), max_size=len(c)))) for c in costs]
    f, pick = min_by_total(costs, values)
    brute: dict[int, float] = {}
    for idx in itertools.product(*(range(len(c)) for c in costs)):
        t = sum(int(c[i]) for c, i in zip(costs, idx, strict=True))
        brute[t] = min(brute.get(t, np.inf), sum(v[i] for v, i in zip(values, idx, strict=True)))
    assert {t for t in range(len(f)) if np.isfinite(f[t])} == set(brute)
    for t, v in brute.items():
        idx = pick(t)
        assert f[t] == pytest.approx(v) and sum(int(c[i]) for c, i in zip(costs, idx, strict=True)) == t
        assert sum(v_[i] for v_, i in zip(values, idx, strict=True)) == pytest.approx(v)
    assert closest_total(f, 10**6) == max(brute)


# -- random models: kept counts are multiples, totals are the closest -------------------------

class RandomNet(nn.Module):
    """Convs of random widths; some blocks residual (two convs and an add: one coupled group),
    some with a depthwise conv (its in and out channels are one group)."""

    def __init__(self, widths: list[int], residual: list[bool], depthwise: list[bool], seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers, c = [], 2
        for w, res, dw in zip(widths, residual, depthwise, strict=True):
            layers.append(Block(c, w, res, dw))
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, residual: bool, depthwise: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out), nn.BatchNorm2d(c_out),
                                nn.ReLU()) if depthwise else None
        self.res = nn.Sequential(nn.Conv2d(c_out, c_out, 1), nn.BatchNorm2d(c_out)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.dw is not None:
            x = self.dw(x)
        return x + self.res(x) if self.res is not None else x


@st.composite
def random_nets(draw) -> nn.Module:
    n = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(3, 40), min_size=n, max_size=n))
    residual = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    depthwise = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return RandomNet(widths, residual, depthwise, draw(st.integers(0, 100))).eval()


def grids_of(plan: ChannelPlan, r: int, min_keep: int) -> list[np.ndarray]:
    return [removal_grid(g.channels, keep_count(min_keep, g.channels), r) for g in plan.groups]


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_nets(), amount=st.floats(0.05, 0.9), r=st.sampled_from([2, 3, 4, 8, 16]),
       min_keep=st.integers(1, 4), method=st.sampled_from(METHODS))
def test_every_method_keeps_multiples_at_the_closest_total(model, amount, r, min_keep, method):
    """Kept counts are multiples of r (>= r, >= min_keep) or the whole group, for every method;
    uniform / global_magnitude round exact counts down or up, each step at most r, so the total
    is within r/2 of the target (the closest rounding: `round_counts`' own brute force above);
    layer_dp's total is the closest any grid allocation reaches (brute force); a target beyond
    the grid's reach takes its most; the shrunk model is the masked model."""
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    opts = {"min_keep": min_keep, "round_to": r, **kw(method)}
    small, plan = pruners.structured.shrink_with_plan(model, method, amount, example_input=x[:1], **opts)
    assert on_grid(plan, r, min_keep), (kept(plan), [g.channels for g in plan.groups])
    assert plan.round_to == r and plan.to_json()["round_to"] == r
    target = round(amount * plan.channels)
    grids = grids_of(plan, r, min_keep)
    counts = [len(rm) for rm in plan.removed]
    most = sum(int(g[-1]) for g in grids)
    if target >= most:  # beyond the grid's reach: every group at its most
        assert counts == [int(g[-1]) for g in grids]
    elif method == "layer_dp":
        reachable = {sum(c) for c in itertools.product(*(g.tolist() for g in grids))}
        assert sum(counts) == min(reachable, key=lambda t: (abs(t - target), t))
    else:  # exact counts rounded down or up: steps of at most r bracket the target, so within r/2
        assert abs(sum(counts) - target) <= r / 2
    with torch.no_grad():
        torch.testing.assert_close(small(x), zero_plan(model, plan)(x), rtol=1e-4, atol=1e-4)


# -- the DP over the grid: optimal on its curves; budgets still met -----------------------------

@pytest.mark.parametrize("r", [2, 3])
def test_rounded_layer_dp_is_the_brute_force_optimum_of_its_curves(r):
    """Every grid count measured (num_amounts 121: 120 = lcm of 8, 6, 5): the DP's Σ D_g is the
    least over every grid allocation with the grid's closest total to round(amount·C) (which
    may be closer than uniform's: uniform rounds its own counts, it does not search the grid)."""
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    opts = {"num_samples": 16, "num_amounts": 121, "batch_size": 16, "round_to": r}
    for seed, amount in itertools.product(range(3), (0.3, 0.5) if r == 3 else (0.3, 0.5, 0.7)):
        model = three_convs(seed)
        plan = pruners.plan_channels(model, "layer_dp", amount, example_input=x[:1], data=x, **opts)
        assert on_grid(plan, r)
        grids = grids_of(plan, r, 1)
        curves = [dict(zip(g.tolist(), group_distortion_curves(model, [grp], x, g[None, :], 16)[0], strict=True))
                  for g, grp in zip(grids, plan.groups, strict=True)]
        target = round(amount * plan.channels)
        allocs = list(itertools.product(*(g.tolist() for g in grids)))
        total = min({sum(a) for a in allocs}, key=lambda t: (abs(t - target), t))
        best = min(sum(c[v] for c, v in zip(curves, a, strict=True)) for a in allocs if sum(a) == total)
        got = sum(c[len(rm)] for c, rm in zip(curves, plan.removed, strict=True))
        assert plan.pruned == total
        assert got == pytest.approx(best, rel=1e-9, abs=1e-15), (seed, amount)
        uniform = pruners.plan_channels(model, "uniform", amount, example_input=x[:1], round_to=r)
        assert abs(total - target) <= abs(uniform.pruned - target)  # uniform only rounds its counts


@pytest.mark.parametrize("budget", ["params", "macs"])
def test_rounded_budget_is_met_on_the_grid_and_brute_force_optimal(budget):
    """budget=params/macs with round_to=2 on a tiny model: at least the target, on the grid,
    and Σ D_g is the least over every grid allocation that meets the budget with no spare step."""
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    opts = {"num_samples": 16, "num_amounts": 121, "batch_size": 16, "budget": budget, "round_to": 2}
    for seed, amount in itertools.product(range(3), (0.3, 0.5, 0.7)):
        model = three_convs(seed)
        plan = pruners.plan_channels(model, "layer_dp", amount, example_input=x[:1], data=x, **opts)
        assert on_grid(plan, 2)
        costs = cost_model(model, plan.groups, budget, x[:1])
        target = budget_target(costs, amount)
        counts = [len(rm) for rm in plan.removed]
        assert costs.removed(counts) >= target
        grids = grids_of(plan, 2, 1)
        curves = [dict(zip(g.tolist(), group_distortion_curves(model, [grp], x, g[None, :], 16)[0], strict=True))
                  for g, grp in zip(grids, plan.groups, strict=True)]

        def down(a, gi, grids=grids):
            i = grids[gi].tolist().index(a[gi])
            return [*a[:gi], int(grids[gi][i - 1]), *a[gi + 1:]] if i else None

        minimal = [a for a in itertools.product(*(g.tolist() for g in grids))
                   if costs.removed(a) >= target and all(
                       down(a, gi) is None or costs.removed(down(a, gi)) < target for gi in range(len(grids)))]
        best = min(sum(c[v] for c, v in zip(curves, a, strict=True)) for a in minimal)
        got = sum(c[v] for c, v in zip(curves, counts, strict=True))
        assert got == pytest.approx(best, rel=1e-9, abs=1e-15), (seed, amount)


# -- real models: ResNet-18 against Torch-Pruning, an mbv3 subnet ------------------------------

def torch_pruning_uniform(amount: float, r: int) -> nn.Module:
    ref = resnet18()
    tp.pruner.MagnitudePruner(
        ref, X[:1], importance=tp.importance.MagnitudeImportance(p=2, group_reduction="sum", normalizer=None),
        pruning_ratio=amount, ignored_layers=[ref.fc], round_to=r).step()
    return ref


def test_uniform_at_half_equals_torch_pruning_round_to():
    """ResNet-18's widths halve to multiples of 8: the same model as Torch-Pruning's."""
    ours = pruners.shrink(resnet18(), "uniform", 0.5, example_input=X[:1], round_to=8)
    expected = torch_pruning_uniform(0.5, 8).state_dict()
    assert ours.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("amount", [0.3, 0.6])
def test_uniform_rounds_both_ways_where_torch_pruning_rounds_down(amount):
    """Torch-Pruning keeps ⌊⌊C(1-a)⌋ / r⌋·r per layer (always down: it over-prunes); ours keeps
    that or r more per group, so the total is the closest to round(a·C). The channels are the
    same choice: Torch-Pruning's model is our least-important channels at its counts."""
    r = 8
    plan = pruners.plan_channels(resnet18(), "uniform", amount, example_input=X[:1], round_to=r)
    theirs_model = torch_pruning_uniform(amount, r)
    modules = dict(theirs_model.named_modules())
    theirs = [modules[g.root].out_channels for g in plan.groups]
    assert theirs == [(int(g.channels * (1 - amount)) // r) * r for g in plan.groups]
    assert {k - t for k, t in zip(kept(plan), theirs, strict=True)} == {0, r}  # both roundings used
    target = round(amount * plan.channels)
    assert abs(plan.pruned - target) < abs(plan.channels - sum(theirs) - target)
    at_theirs = ChannelPlan(plan.groups, [least_important(g.scores, g.channels - t)
                                          for g, t in zip(plan.groups, theirs, strict=True)])
    replay = apply_plan(resnet18(), at_theirs, example_input=X[:1]).state_dict()
    assert all(torch.equal(v, replay[k]) for k, v in theirs_model.state_dict().items())


@pytest.mark.parametrize("method", METHODS)
def test_shrunk_mbv3_subnet_keeps_multiples_of_8_and_equals_the_masked_subnet(method):
    net = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for amount in (0.3, 0.7):
        sub = net.extract(net.space.sample(0)).eval()
        small, plan = pruners.structured.shrink_with_plan(sub, method, amount, example_input=x[:1],
                                                          round_to=8, **kw(method))
        assert on_grid(plan, 8) and plan.pruned > 0
        assert abs(plan.pruned - round(amount * plan.channels)) <= 8
        convs = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
        dense = [m.out_channels for m in sub.modules() if isinstance(m, nn.Conv2d)]
        assert all(c % 8 == 0 or c == d for c, d in zip(convs, dense, strict=True)), (convs, dense)
        with torch.no_grad():
            torch.testing.assert_close(small(x), zero_plan(net.extract(net.space.sample(0)).eval(), plan)(x),
                                       rtol=1e-4, atol=1e-5)


# -- the option: bounded, strict, and reachable from a config -----------------------------------

@pytest.mark.parametrize(("value", "message"), [
    (0, "round_to"), (1025, "round_to"), ("8", "round_to"), (True, "round_to"), (2.0, "round_to")])
def test_round_to_out_of_range_or_wrong_type_is_one_line(value, message):
    with pytest.raises(pruners.PruneError, match=message):
        pruners.validate_shrink_options("uniform", {"round_to": value})


def test_round_to_one_is_no_rounding():
    model, x = three_convs(0), torch.randn(1, 1, 8, 8)
    for method in ("uniform", "global_magnitude"):
        a = pruners.plan_channels(model, method, 0.4, example_input=x, round_to=1)
        b = pruners.plan_channels(model, method, 0.4, example_input=x)
        assert a.removed == b.removed and a.pruned == round(0.4 * a.channels)


def test_cli_round_to_reaches_the_pruner_and_mistakes_exit_2(cli, tmp_path):
    """`--set prune.kwargs.round_to=N` is checked by value before the run directory exists,
    and reaches the allocation: the run's channels.json keeps multiples of 8."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "results", method="global_magnitude"))
    for bad in ("0", "4096"):
        res = cli("prune", str(cfg), "--set", "prune.kind=structured", "--set", f"prune.kwargs.round_to={bad}")
        assert res.code == 2 and "prune.kwargs" in res.err and "round_to" in res.err, res.err
        assert len(res.err.strip().splitlines()) == 1
        assert not (tmp_path / "results" / "s").exists()
    res = cli("prune", str(cfg), "--set", "prune.kind=structured", "--set", "prune.kwargs.round_to=8")
    assert res.code == 0, res.err
    plan = json.loads((tmp_path / "results" / "s" / "channels.json").read_text())
    assert plan["round_to"] == 8 and plan["pruned"] > 0
    assert all(g["channels"] - len(g["removed"]) in (g["channels"], *range(8, g["channels"], 8))
               for g in plan["groups"])


def test_joint_search_round_to_is_checked_with_the_config(tmp_path, cli):
    """`search.prune.options` are the pruner's options: a bad round_to is one line, exit 2,
    before the run directory (checked with the config, not at the first pruned subnet)."""
    res = cli("search", "--set", f"run.root={tmp_path}", "--set", "run.name=x", "--set", "budget=1",
              "--set", "prune.kind=structured", "--set", "prune.options.round_to=0")
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "search.prune.options" in res.err and "round_to" in res.err
    assert not (tmp_path / "x").exists()


def test_bench_joint_passes_round_to_to_the_pruner_and_its_cache_key():
    """`bench joint --set round_to=8`: the search's prune options carry it, and the objective
    cache key differs from a run without it (a cached latency of the odd-count model is never
    reused); without it the key is the one older caches were written under."""
    from nasbench.bench.joint import JointSettings, _prune_options, _round_key

    with_r, without = JointSettings(round_to=8), JointSettings()
    assert _prune_options(with_r) == {"round_to": 8} and _prune_options(without) == {}
    assert _round_key(with_r) == ",round_to=8" and _round_key(without) == ""
