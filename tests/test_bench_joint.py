"""`bench joint`: the search_then_prune split and the hypervolume, against brute force.

`check_report` is the smoke check of a whole report (tests/test_bench_smoke.py runs it on a
--quick run): both arms spent exactly E evaluations, the baseline pruned exactly its front's
subnets at every other sparsity, and every hypervolume is the brute-force one of the stored
points against one reference point derived from all of them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nasbench.bench.joint import REF_MARGIN, normalised_hv, reference_box, split


def front_of(points) -> list[int]:
    """Indices of the points no other point dominates (top1 max, latency min): brute force."""
    return [i for i, (t, lat) in enumerate(points)
            if not any(t2 >= t and l2 <= lat and (t2 > t or l2 < lat) for t2, l2 in points)]


def staircase_hv(points, ref: dict, ideal: dict) -> float:
    """2-D hypervolume by a sweep over top1 (best first), divided by the reference box."""
    area, floor = 0.0, ref["latency_ms"]
    for t, lat in sorted(points, key=lambda p: (-p[0], p[1])):
        if t > ref["top1"] and lat < floor:
            area += (t - ref["top1"]) * (floor - lat)
            floor = lat
    return area / ((ideal["top1"] - ref["top1"]) * (ref["latency_ms"] - ideal["latency_ms"]))


def _table(rng, n):
    return pd.DataFrame({"top1": rng.integers(0, 30, n) / 30, "latency_ms": rng.uniform(1, 5, n),
                         "arch_id": [f"a{i}" for i in range(n)]})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 4])
def test_split_is_the_largest_e1_whose_front_prunings_fit(seed, k):
    df = _table(np.random.default_rng(seed), 40)
    evaluations = 40
    e1, size = split(df, evaluations, k)
    pts = list(zip(df["top1"], df["latency_ms"], strict=True))
    need = {n: n + (k - 1) * len(front_of(pts[:n])) for n in range(1, len(df) + 1)}
    assert size == len(front_of(pts[:e1])) and need[e1] <= evaluations
    assert all(need[n] > evaluations for n in need if n > e1)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_against_a_common_reference_is_the_staircase(seed):
    rng = np.random.default_rng(seed)
    arms = [[[f"a{i}", 0.0, float(t), float(lat), "search"] for i, (t, lat) in
             enumerate(zip(rng.uniform(0.5, 1, 25), rng.uniform(1, 9, 25), strict=True))]
            for _ in range(2)]
    union = arms[0] + arms[1]
    ref, ideal = reference_box(union)
    top1 = [p[2] for p in union]
    assert ref["top1"] == pytest.approx(min(top1) - REF_MARGIN * (max(top1) - min(top1)))
    for arm in arms:
        assert normalised_hv(arm, ref, ideal) == pytest.approx(
            staircase_hv([(p[2], p[3]) for p in arm], ref, ideal), rel=1e-12)


def check_report(fig) -> None:
    """A whole `bench joint` report, checked against its stored points (see the module doc)."""
    e = fig["setup"]["evaluations_per_arm"]
    others = sorted(s for s in fig["setup"]["sparsities"] if s != 0.0)
    union = [p for arms in fig["points"].values() for arm in arms.values() for p in arm]
    ref, ideal = reference_box(union)
    assert ref == fig["reference_point"] and ideal == fig["ideal_point"]
    for seed, arms in fig["points"].items():
        row = fig["per_seed"][seed]
        for arm, points in arms.items():  # exactly E true evaluations, no subnet twice
            assert len(points) == e and len({(p[0], p[1]) for p in points}) == e, arm
            assert row[f"hv_{arm}"] == pytest.approx(
                staircase_hv([(p[2], p[3]) for p in points], ref, ideal), abs=1e-5)
        assert set(fig["setup"]["sparsities"]) >= {p[1] for p in arms["joint"]}
        searched = [p for p in arms["search_then_prune"] if p[4] == "search"]
        pruned = [p for p in arms["search_then_prune"] if p[4] == "prune"]
        assert arms["search_then_prune"] == searched + pruned and {p[1] for p in searched} == {0.0}
        cut = row["search_then_prune_split"]
        assert len(searched) == cut["search_evaluations"] and cut["front_from_first"] <= len(searched)
        first = searched[: cut["front_from_first"]]
        front = {first[i][0] for i in front_of([(p[2], p[3]) for p in first])}
        assert sorted((p[0], p[1]) for p in pruned) == sorted((a, s) for a in front for s in others)
