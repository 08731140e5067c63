"""`nasbench bench joint`: joint architecture x sparsity search against "search, then prune".

Both arms search the same trained tiny supernet (`--set family=mbv3`: digits, `resnet`:
mnist5k; trained as `bench search` trains it, or `checkpoint=PATH`) for top1 (max, BN
recalibrated on 2 fixed batches) x latency_ms (min, measured: ONNX Runtime, batch 1, 1 thread,
interleaved rounds with noisy timings re-timed), with the same optimizer and seed, and spend
exactly `evaluations` (E) true evaluations each:

- joint: the optimizer over arch x sparsity (`search.joint.PrunedSubnets`, structured
  `pruner`, so a pruned subnet is physically smaller and its latency is measured) for E.
  `round_to=8` makes every pruned group keep a multiple of 8 channels (odd counts made the
  pruned subnets slower than the dense ones in onnxruntime).
- search_then_prune: the optimizer over arch alone (sparsity 0) for E1 evaluations, then every
  subnet on the front of those E1 is pruned to every other sparsity and measured, k - 1
  evaluations per front subnet for k sparsities. E1 is the largest with E1 + (k-1)|front(E1)|
  <= E (the first E1 rows of one search of E - k + 1 evaluations are the search a budget of E1
  runs: the optimizers never look at their budget). The r = E - E1 - (k-1)|front| left over
  (a front that grew by one can overshoot) go to the search: its rows E1+1 .. E1+r count as
  evaluated points, but are not pruned.

No fine-tuning after pruning in either arm (BN is recalibrated). Hypervolume of each arm's
evaluated points against one reference point for all arms and seeds: the nadir of the union of
every point measured, pushed out by 10% of each objective's range, normalised by the box from
there to the union's ideal point. A measurement is deterministic for this benchmark: the first
value of an arch is cached on disk (`joint-objective-cache.parquet`) and reused by both arms
and every seed, so the arms differ only in which archs they ask for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field, PositiveInt, ValidationInfo, field_validator

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, one_of

DIRECTIONS = {"top1": "max", "latency_ms": "min"}
REF_MARGIN = 0.1
BN_BATCHES = 2
POPULATION = {"nsga2": "pop_size", "linas": "pop_size", "agemoea": "pop_size", "nsga3": "pop_size",
              "optuna_nsga2": "population_size"}
"""The setting `pop_size` is given as, for optimizers with a population."""


def _structured_pruners() -> list[str]:
    import pruners

    return pruners.list_pruners(kind="structured")


def _optimizer_names() -> list[str]:
    import search

    return search.list_optimizers()


Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]


def _with_zero(values: list[float]) -> list[float]:
    if 0.0 not in values or len(set(values)) != len(values):
        raise ValueError("must be distinct and include 0 (the unpruned subnet)")
    return values


class JointSettings(BenchSettings):
    family: one_of(("mbv3", "resnet"), "family") = "mbv3"
    checkpoint: str | None = None  # a trained run of `family`; None: trained (or reused) here
    sparsities: Annotated[list[Sparsity], Field(min_length=2, max_length=10),
                          AfterValidator(_with_zero)] = [0.0, 0.3, 0.5, 0.7]
    evaluations: Annotated[int, Field(ge=2, le=5000)] = 80  # true evaluations per arm and seed
    seeds: Annotated[int, Field(ge=1, le=20)] = 3
    pruner: one_of(_structured_pruners, "structured pruner") = "global_magnitude"
    round_to: Annotated[int, Field(ge=1, le=1024)] | None = None  # kept channels: multiples of it
    optimizer: one_of(_optimizer_names, "optimizer") = "nsga2"
    pop_size: Annotated[int, Field(ge=2, le=500)] = 12
    val_batches: PositiveInt | None = None  # None: the whole validation split
    latency_repeats: Annotated[int, Field(ge=1, le=1000)] = 20

    @field_validator("evaluations")
    @classmethod
    def _room_to_prune(cls, value: int, info: ValidationInfo) -> int:
        k = len(info.data.get("sparsities") or [])
        if value < k:
            raise ValueError(f"must be >= {k}, one subnet at every sparsity, for search_then_prune")
        return value

    quick_defaults = {"evaluations": 8, "seeds": 2, "sparsities": [0.0, 0.5], "pop_size": 4,
                      "val_batches": 1, "latency_repeats": 3}


def _latency_settings(s: JointSettings) -> dict[str, Any]:
    """The robust defaults (5 interleaved rounds, noisy re-timed twice), few calls per round."""
    return {"backend": "onnxruntime", "threads": 1, "batch": 1, "warmup": 5,
            "repeats": s.latency_repeats, "rounds": 5, "max_rel_iqr": 0.1, "max_retimes": 2}


def measured_objectives(run_path: Path, s: JointSettings, out_dir: Path):
    """(pruned-subnets net, [top1, latency_ms] over its joint space, info, cache): the
    supernet loaded as `nasbench search` with `prune:` loads it, each value cached on disk."""
    import search
    from nasbench.bench.search import DiskCache
    from nasbench.data.fixed import FixedSubset
    from nasbench.runners.search import SearchConfig, load_supernet

    latency = _latency_settings(s)
    cfg = SearchConfig.model_validate({
        "supernet": {"run": str(run_path)},
        "prune": {"kind": "structured", "method": s.pruner, "sparsity": list(s.sparsities),
                  "options": _prune_options(s)}})
    net, data, info = load_supernet(cfg, "cpu")
    subset = FixedSubset.draw(data, bn_batches=BN_BATCHES, val_batches=s.val_batches, seed=0)
    calib, val = subset.loaders(data)
    net.calibration = calib
    ctx = search.ObjectiveContext(
        supernet=net, calib_loader=calib, val_loader=val, bn_batches=len(calib),
        input_shape=(data.in_chans, data.resolution, data.resolution), latency=latency)
    timing = ",".join(f"{k}={v}" for k, v in sorted(latency.items()))
    cache = DiskCache(out_dir / "joint-objective-cache.parquet",
                      key=f"{Path(run_path).resolve()}|calibration={subset.id}|"
                          f"structured:{s.pruner}{_round_key(s)}|{timing}")
    objectives = [search.Objective(o.name, cache.wrap(o.name, net.space, o.fn), o.direction,
                                   o.unit, o.source)
                  for o in search.make_objectives(list(DIRECTIONS), ctx)]
    info = {**info, "calibration": subset.id, "data": data.name, "resolution": data.resolution,
            "val_samples": sum(len(y) for _, y in val)}
    return net, objectives, info, cache


def _prune_options(s: JointSettings) -> dict[str, Any]:
    """`round_to` (None: off) goes to the structured pruner (`pruners.structured.ShrinkOptions`)."""
    return {} if s.round_to is None else {"round_to": s.round_to}


def _round_key(s: JointSettings) -> str:
    """The cache key's part for round_to: none without it, so older caches stay valid."""
    return "" if s.round_to is None else f",round_to={s.round_to}"


def _at_sparsity(objective, sparsity: float):
    """An objective of the joint space as one of the arch space, at a fixed sparsity."""
    import search
    from search.joint import SPARSITY

    return search.Objective(objective.name, lambda arch: objective({**arch, SPARSITY: sparsity}),
                            objective.direction, objective.unit, objective.source)


def _optimizer_settings(s: JointSettings) -> dict[str, Any]:
    return {POPULATION[s.optimizer]: s.pop_size} if s.optimizer in POPULATION else {}


def _search(space, objectives, budget: int, seed: int, s: JointSettings):
    """The evaluations table of one seeded search of `budget` true evaluations."""
    import search

    ev = search.Evaluator(space, objectives, budget=budget, seed=seed)
    search.create_optimizer(s.optimizer, **_optimizer_settings(s)).run(search.SearchProblem(ev),
                                                                      seed=seed)
    return ev.df


def split(df, evaluations: int, k: int) -> tuple[int, int]:
    """(E1, front size): the largest E1 whose front, pruned to the k-1 other sparsities, fits
    in `evaluations` together with the E1 search evaluations."""
    from search import pareto_mask

    for e1 in range(min(len(df), evaluations - (k - 1)), 0, -1):
        front = int(pareto_mask(df.head(e1), DIRECTIONS).sum())
        if e1 + (k - 1) * front <= evaluations:
            return e1, front
    raise AssertionError("unreachable: one search row and its k-1 prunings always fit")


def joint_arm(net, objectives, s: JointSettings, seed: int) -> list[list]:
    """Points [base arch_id, sparsity, top1, latency_ms, stage] of the joint search."""
    from search.joint import SPARSITY

    df = _search(net.space, objectives, s.evaluations, seed, s)
    base = net.supernet.space
    return [[base.arch_id(net.base_arch(arch)), float(arch[SPARSITY]), float(t), float(lat),
             "search"]
            for arch, t, lat in zip(map(net.space.parse, df["arch"]), df["top1"],
                                    df["latency_ms"], strict=True)]


def baseline_arm(net, objectives, s: JointSettings, seed: int) -> tuple[list[list], dict]:
    """Points of search_then_prune (search rows first, then the front's prunings) and its split."""
    from search import pareto_mask

    k = len(s.sparsities)
    base = net.supernet.space
    plain = [_at_sparsity(o, 0.0) for o in objectives]
    df = _search(base, plain, s.evaluations - (k - 1), seed, s)
    e1, front_size = split(df, s.evaluations, k)
    extra = s.evaluations - e1 - (k - 1) * front_size
    searched = df.head(e1 + extra)
    front = df.head(e1)[pareto_mask(df.head(e1), DIRECTIONS)]
    points = [[aid, 0.0, float(t), float(lat), "search"] for aid, t, lat in
              zip(searched["arch_id"], searched["top1"], searched["latency_ms"], strict=True)]
    by_name = {o.name: o for o in objectives}
    for arch in map(base.parse, front["arch"]):
        for sp in sorted(x for x in s.sparsities if x != 0.0):
            joint_arch = {**arch, "sparsity": sp}
            points.append([base.arch_id(arch), float(sp), float(by_name["top1"](joint_arch)),
                           float(by_name["latency_ms"](joint_arch)), "prune"])
    return points, {"search_evaluations": e1 + extra, "front_from_first": e1,
                    "front_size": front_size, "pruning_evaluations": (k - 1) * front_size,
                    "unpruned_extra_search": extra, "search_run_length": len(df)}


def reference_box(points: list[list]) -> tuple[dict[str, float], dict[str, float]]:
    """(reference point, ideal point) of the union of points: nadir + REF_MARGIN x range."""
    top1 = np.array([p[2] for p in points], float)
    lat = np.array([p[3] for p in points], float)
    ref = {"top1": float(top1.min() - REF_MARGIN * np.ptp(top1)),
           "latency_ms": float(lat.max() + REF_MARGIN * np.ptp(lat))}
    return ref, {"top1": float(top1.max()), "latency_ms": float(lat.min())}


def normalised_hv(points: list[list], ref: dict[str, float], ideal: dict[str, float]) -> float:
    """Hypervolume (search.hypervolume, pymoo) of the points / the reference box's area."""
    import pandas as pd

    from search import hypervolume

    df = pd.DataFrame({"top1": [p[2] for p in points], "latency_ms": [p[3] for p in points]})
    box = (ideal["top1"] - ref["top1"]) * (ref["latency_ms"] - ideal["latency_ms"])
    return hypervolume(df, ref, DIRECTIONS) / box if box > 0 else 0.0


def _stats(values) -> dict[str, Any]:
    from nasbench.bench.search import _stats as stats

    return stats(list(values))


def _cached(cache) -> int:
    """Pruned subnets with both objectives in the disk cache under this run's key."""
    return sum(1 for key, _ in cache.values if key == f"{cache.key}|latency_ms")


def _front_sparsities(points: list[list]) -> dict[str, int]:
    """How many points of this set's own front sit at each sparsity."""
    import pandas as pd

    from search import pareto_mask

    df = pd.DataFrame({"top1": [p[2] for p in points], "latency_ms": [p[3] for p in points],
                       "sparsity": [p[1] for p in points]})
    front = df[pareto_mask(df, DIRECTIONS)]
    return {f"{sp:g}": int(n) for sp, n in front["sparsity"].value_counts().sort_index().items()}


@benchmark("joint", help="HV of top1 x measured latency: joint arch x sparsity search vs search "
           "then prune the front, at equal true evaluations.", options=JointSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    from nasbench.bench.search import trained_supernet

    s = JointSettings.of(opts)
    torch.set_num_threads(1)
    out_dir = Path(opts.out_dir)
    seeds = [opts.seed + i for i in range(s.seeds)]
    run_path = trained_supernet(out_dir, opts.quick, s.checkpoint, family=s.family)
    net, objectives, info, cache = measured_objectives(run_path, s, out_dir)
    cached_before = _cached(cache)
    points: dict[str, dict[str, list]] = {}
    splits, walls = {}, {"joint": [], "search_then_prune": []}
    for seed in seeds:
        t0 = time.perf_counter()
        joint = joint_arm(net, objectives, s, seed)
        t1 = time.perf_counter()
        baseline, splits[str(seed)] = baseline_arm(net, objectives, s, seed)
        walls["joint"].append(t1 - t0)
        walls["search_then_prune"].append(time.perf_counter() - t1)
        points[str(seed)] = {"joint": joint, "search_then_prune": baseline}
        cache.save()
    union = [p for arms in points.values() for arm in arms.values() for p in arm]
    ref, ideal = reference_box(union)
    hv = {arm: [normalised_hv(points[str(seed)][arm], ref, ideal) for seed in seeds]
          for arm in ("joint", "search_then_prune")}
    diff = np.subtract(hv["joint"], hv["search_then_prune"])
    ratio = np.divide(hv["joint"], hv["search_then_prune"])
    per_seed = {str(seed): {
        "hv_joint": round(hv["joint"][i], 5), "hv_search_then_prune": round(hv["search_then_prune"][i], 5),
        "joint_front_sparsities": _front_sparsities(points[str(seed)]["joint"]),
        "search_then_prune_front_sparsities": _front_sparsities(points[str(seed)]["search_then_prune"]),
        "search_then_prune_split": splits[str(seed)],
        "evaluations": {arm: len(points[str(seed)][arm]) for arm in points[str(seed)]},
    } for i, seed in enumerate(seeds)}
    wins = int((diff > 0).sum())
    return {
        "supernet": {**info, "run": str(run_path), "family": s.family,
                     "space_cardinality": net.supernet.space.cardinality},
        "setup": {"evaluations_per_arm": s.evaluations, "sparsities": list(s.sparsities),
                  "pruner": f"structured {s.pruner}", "round_to": s.round_to, "optimizer": s.optimizer,
                  "optimizer_settings": _optimizer_settings(s),
                  "objectives": DIRECTIONS, "bn_batches": BN_BATCHES,
                  "val_batches": s.val_batches, "latency": _latency_settings(s),
                  "fine_tuning": "none (BN recalibrated after pruning)"},
        "split_rule": "search_then_prune: E1 search evaluations, the largest with E1 + (k-1) x "
                      "|front of those E1| <= E; the r left over are further search rows "
                      "(counted, not pruned)",
        "reference_point": ref,
        "ideal_point": ideal,
        "normalisation": "HV / area of the box from the reference point to the ideal point, "
                         f"both from the union of every arm's points over every seed "
                         f"(nadir + {REF_MARGIN:g} x range)",
        "seeds": seeds,
        "hypervolume": {"joint": _stats(hv["joint"]),
                        "search_then_prune": _stats(hv["search_then_prune"]),
                        "joint_minus_search_then_prune": _stats(diff),
                        "joint_over_search_then_prune": _stats(ratio)},
        "joint_wins_seeds": f"{wins}/{len(seeds)}",
        "winner": ("joint" if diff.mean() > 0 else "search_then_prune") if diff.mean() != 0 else "tie",
        "per_seed": per_seed,
        "wall_s_per_seed": {arm: round(float(np.mean(v)), 1) for arm, v in walls.items()},
        "measured_pruned_subnets": {
            "in_cache_before": cached_before,
            "measured_now": _cached(cache) - cached_before,
            "note": "each (arch, sparsity) is measured once, shared by both arms and every seed"},
        "points_columns": ["base_arch_id", "sparsity", "top1", "latency_ms", "stage"],
        "points": points,
    }
