"""Canonical archs: one subnet, one arch, one id; inactive dimensions change nothing anywhere."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import search
import supernets
from search.evaluations import Evaluator
from search.objectives import Objective
from supernets.space import SearchSpace

FAMILY_KWARGS = {"mbv3": {}, "vit": {}, "resnet": {"block": "bottleneck"}}  # bottleneck: MoS 1x1s


def _presets(family: str) -> list[str]:
    module = supernets.SUPERNETS.get(family).__module__
    return list(__import__(module, fromlist=["PRESETS"]).PRESETS)


# every registered family and preset; full-size presets take seconds per forward: slow suite
PRESETS = [pytest.param(family, preset, marks=[pytest.mark.slow] if preset != "tiny" else [])
           for family in supernets.list_supernets() for preset in _presets(family)]


@functools.cache
def net_for(family: str, preset: str, mos: str | None = None) -> supernets.Supernet:
    torch.manual_seed(0)
    net = supernets.create(family, preset=preset, num_classes=5, in_chans=1,
                           mos=None if mos is None else {"type": mos, "experts": 2},
                           **FAMILY_KWARGS.get(family, {}))
    if mos is not None:  # routers far from uniform, so the router input shows in the output
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "router" in name:
                    p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


def outputs(net: supernets.Supernet, arch: dict) -> torch.Tensor:
    res = max(int(c) for c in net.space["resolution"].choices) if "resolution" in net.space else 32
    x = torch.randn(2, 1, res, res, generator=torch.Generator().manual_seed(3))
    net.set_active(arch)
    with torch.no_grad():
        return net(net.prepare_input(x, arch))


def perturb_inactive(space: SearchSpace, arch: dict, rng: np.random.Generator) -> dict:
    out = dict(arch)
    for d in space.dims:
        if not space.is_active(arch, d.name):
            out[d.name] = d.choices[int(rng.integers(len(d.choices)))]
    return out


@pytest.mark.parametrize(("family", "preset"), PRESETS)
def test_every_family_gates_its_blocks_by_depth(family, preset):
    space = net_for(family, preset).space
    assert space.gated, f"{family}/{preset} declares no gates"
    assert space.count(distinct=True) < space.count()


@pytest.mark.parametrize(("family", "preset", "mos"),
                         [pytest.param(*p.values, None, marks=p.marks) for p in PRESETS] +
                         [(f, "tiny", m) for f in FAMILY_KWARGS for m in ("layer", "neuron")])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_inactive_dimensions_change_neither_the_id_nor_one_output_bit(family, preset, mos, seed):
    net = net_for(family, preset, mos)
    space, rng = net.space, np.random.default_rng(seed)
    arch = space.decode([rng.integers(len(d.choices)) for d in space.dims])
    other = perturb_inactive(space, arch, rng)
    assert space.arch_id(other) == space.arch_id(arch)
    assert space.canonical(other) == space.canonical(arch)
    assert np.array_equal(space.features(other), space.features(arch))
    assert np.array_equal(space.one_hot(other), space.one_hot(arch))
    assert torch.equal(outputs(net, other), outputs(net, arch))


@pytest.mark.parametrize("family", sorted(FAMILY_KWARGS))
def test_every_active_dimension_changes_the_output(family):
    """The other half: a gate that switched off a dimension that matters would fail here."""
    net = net_for(family, "tiny")
    space = net.space
    arch = space.largest()  # every gated block on
    base = outputs(net, arch)
    for d in space.dims:
        if len(d.choices) < 2:
            continue
        assert space.is_active(arch, d.name)
        changed = {**arch, d.name: d.choices[0]}
        assert space.arch_id(changed) != space.arch_id(arch), d.name
        assert not torch.equal(outputs(net, changed), base), d.name


@pytest.mark.parametrize(("family", "preset"), [("resnet", "tiny"), ("vit", "tiny")])
def test_distinct_count_matches_brute_force_on_the_tiny_spaces(family, preset):
    space = net_for(family, preset).space
    every = itertools.product(*[range(len(d.choices)) for d in space.dims])
    distinct = {space.canonical_json(space.decode(idx)) for idx in every}
    assert space.count() == int(space.cardinality)
    assert space.count(distinct=True) == len(distinct)


@st.composite
def gated_spaces(draw) -> SearchSpace:
    """Small random spaces: depths gating blocks, and blocks that gate further dims (chains)."""
    dims: dict = {"r": draw(st.lists(st.integers(1, 4), min_size=1, max_size=2, unique=True))}
    gates = {}
    for s in range(draw(st.integers(1, 2))):
        depths = sorted(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True)))
        dims[f"s{s}.depth"] = depths
        for j in range(max(depths)):
            dims[f"s{s}.b{j}"] = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2, unique=True))
            if j + 1 > depths[0]:
                gates[f"s{s}.b{j}"] = (f"s{s}.depth", j + 1)
            if draw(st.booleans()):
                dims[f"s{s}.b{j}.x"] = [0, 1]
                gates[f"s{s}.b{j}.x"] = (f"s{s}.b{j}", max(dims[f"s{s}.b{j}"]))
    return SearchSpace({k: sorted(v) for k, v in dims.items()}, gates)


@settings(max_examples=60, deadline=None)
@given(space=gated_spaces())
def test_distinct_count_matches_brute_force_on_random_gated_spaces(space):
    every = itertools.product(*[range(len(d.choices)) for d in space.dims])
    assert space.count(distinct=True) == len({space.canonical_json(space.decode(i)) for i in every})
    assert SearchSpace.from_json(space.to_json()) == space  # gates survive storage


@pytest.mark.parametrize("optimizer", ["random", "nsga2", "linas"])
def test_a_search_never_measures_one_subnet_twice(optimizer):
    net = net_for("resnet", "tiny")
    space = net.space  # 1,620 encodings, 720 subnets
    calls = []

    def subnet(arch) -> tuple:
        """What the resnet runs, worked out here without the space: each stage's depth and the
        expand ratios of the blocks within it."""
        return (arch["resolution"],) + tuple(
            (arch[f"stage{s}.depth"], *[arch[f"block{i}.expand"] for i in idx[:arch[f"stage{s}.depth"]]])
            for s, idx in enumerate(net.stage_blocks))

    def params(arch):
        calls.append(subnet(arch))
        return float(net.count_params(arch))

    def depth(arch):
        return float(sum(v for k, v in arch.items() if k.endswith("depth")))

    objectives = [Objective("params", params, "min", "count"),
                  Objective("depth", depth, "max", "blocks")]
    ev = Evaluator(space, objectives, budget=150)
    settings_ = {"random": {"batch_size": 20}, "nsga2": {"pop_size": 20},
                 "linas": {"pop_size": 20, "inner_generations": 5, "regressors": ["ridge"]}}[optimizer]
    search.create_optimizer(optimizer, **settings_).run(search.SearchProblem(ev), seed=0)
    df = ev.df
    assert len(df) > 50
    assert df["arch_id"].is_unique and df["arch"].is_unique
    assert all(space.canonical_json(space.parse(a)) == a for a in df["arch"])
    assert len(calls) == len(set(calls)) == len(df)  # each subnet measured once
