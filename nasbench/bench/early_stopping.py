"""`nasbench bench early_stopping`: learning-curve early stopping on real training curves.

The built-in table's `top1_curve` holds every arch's val top-1 after each of its 10 training
epochs (`python -m nasbench.tabular.generate --add-curves` retrained them to the same bits);
`--set problem=nb201-cifar10 --set nb201=PATH` (or nb201-cifar100, nb201-ImageNet16-120) uses
NAS-Bench-201's 200-epoch validation curves instead, when the user has the file.
A random-order search over the table trains archs one after another, epoch by epoch along
those curves, with and without a `search.early_stopping.CurveStopper` (Baker-style ν-SVR
curve regressors; an arch stops when P(it joins the current (top1, costs) front) < delta).

Reported per delta, as mean and per seed: epochs spent against training every arch to the end;
archs stopped; recall of the table's true front (its archs trained to the end); false stops
(true-front archs that were stopped); and the epochs each variant needs before the front of its
completed archs first reaches a share of the true front's hypervolume, so the speedup is at
equal quality.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from nasbench.bench.optimizers import NB201, require_nb201_file
from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, names_of, one_of
from nasbench_core.errors import UserError

COSTS = ("latency_ms", "macs", "params")
PROBLEMS = ("builtin", *NB201)


class EarlyStoppingSettings(BenchSettings):
    problem: one_of(PROBLEMS, "problem") = "builtin"
    table: str | None = None  # a tabular benchmark's Parquet file with `top1_curve`; None: shipped
    nb201: str | None = None  # the NAS-Bench-201 .pth file, for the nb201-* problems
    seeds: PositiveInt = 5
    archs: PositiveInt = 216  # archs in each search (a seeded random order of that many)
    costs: names_of(COSTS, "cost") = ["latency_ms"]  # minimised with top1 (max)
    deltas: Annotated[list[Annotated[float, Field(gt=0, lt=1)]], Field(min_length=1)] = [
        0.01, 0.05, 0.2]
    min_epochs: PositiveInt = 3
    min_curves: Annotated[int, Field(ge=2)] = 10
    targets: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = [
        0.9, 0.95, 0.99]

    quick_defaults = {"seeds": 1, "archs": 30, "deltas": [0.05], "targets": [0.9]}

    @model_validator(mode="after")
    def _nb201_file(self) -> EarlyStoppingSettings:
        require_nb201_file([self.problem], self.nb201)
        return self


def _open(s: EarlyStoppingSettings):
    """The problem's table with learning curves: the shipped one, or every NAS-Bench-201 arch
    with its 200-epoch validation curve (cifar10's from cifar10-valid)."""
    from nasbench.tabular.builtin import load_builtin
    from nasbench.tabular.published import open_nasbench201

    if s.problem == "builtin":
        return load_builtin(s.table)
    return open_nasbench201(s.nb201, dataset=NB201[s.problem]).tabulate(curves=True)


def _epochs_to_reach(curves, costs, replay, ref, true_hv: float, targets: list[float]):
    """Epochs spent until the completed archs' front first holds each share of the true HV."""
    from search.pareto import hypervolume

    directions = ["max"] + ["min"] * costs.shape[1]
    spent = np.cumsum(replay.epochs)
    reached: dict[float, int | None] = dict.fromkeys(targets)
    done: list[int] = []
    for k, (i, complete) in enumerate(zip(replay.order, replay.complete, strict=True)):
        if not complete:
            continue
        done.append(int(i))
        share = hypervolume(np.column_stack([curves[done, -1], costs[done]]), ref, directions) / true_hv
        for t in targets:
            if reached[t] is None and share >= t:
                reached[t] = int(spent[k])
    return reached


def _summary(values: list[Any]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    return {"mean": round(float(np.mean(known)), 4) if known else None, "per_seed": values}


@benchmark("early_stopping", help="learning-curve early stopping on the built-in table's real "
           "curves: epochs saved, true-front recall, epochs to a target HV, vs no stopping.",
           options=EarlyStoppingSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    from nasbench.bench.optimizers import reference_point
    from nasbench.tabular.builtin import table_path
    from search.early_stopping import CurveStopper, replay
    from search.pareto import hypervolume, pareto_mask

    s = EarlyStoppingSettings.of(opts)
    bench = _open(s)
    curves = bench.curves()
    missing = [c for c in s.costs if c not in bench.table.columns]
    if missing:
        raise UserError(f"bench early_stopping: problem {s.problem} has no cost {missing[0]!r}")
    horizon = curves.shape[1]
    if s.min_epochs >= horizon:
        raise UserError(f"bench early_stopping: min_epochs must be below the curves' {horizon} epochs")
    costs = bench.table[s.costs].to_numpy(dtype=float)
    features = np.vstack([bench.space.features(bench.space.parse(a)) for a in bench.table["arch"]])
    directions = {"top1": "max", **dict.fromkeys(s.costs, "min")}
    ref = reference_point(bench, list(directions))
    true_hv = hypervolume(bench.table, ref, directions)
    true_front = set(np.flatnonzero(pareto_mask(bench.table, directions)))
    ref_list = [ref[c] for c in directions]
    n = min(s.archs, len(curves))
    orders = [np.random.default_rng([opts.seed, seed]).permutation(len(curves))[:n]
              for seed in range(s.seeds)]

    def evaluate(delta: float | None) -> dict[str, Any]:
        per: dict[str, list[Any]] = {"epochs": [], "stopped": [], "front_recall": [],
                                     "false_stops": [], "wall_s": []}
        reach: dict[float, list[int | None]] = {t: [] for t in s.targets}
        for order in orders:
            t0 = time.perf_counter()
            stopper = None if delta is None else CurveStopper(
                horizon, min_epochs=s.min_epochs, min_curves=s.min_curves, delta=delta)
            out = replay(curves, features, costs, order, stopper)
            per["wall_s"].append(round(time.perf_counter() - t0, 2))
            in_front = [i for i in order if i in true_front]
            completed = set(out.completed().tolist())
            per["epochs"].append(int(out.epochs.sum()))
            per["stopped"].append(int((~out.complete).sum()))
            per["front_recall"].append(round(sum(i in completed for i in in_front)
                                             / max(len(in_front), 1), 4))
            per["false_stops"].append(sum(i not in completed for i in in_front))
            for t, e in _epochs_to_reach(curves, costs, out, ref_list, true_hv, s.targets).items():
                reach[t].append(e)
        return {**{k: _summary(v) for k, v in per.items()},
                **{f"epochs_to_hv{t:g}": _summary(v) for t, v in reach.items()}}

    started = time.perf_counter()
    baseline = evaluate(None)
    variants = {f"delta={d:g}": evaluate(d) for d in s.deltas}
    full = baseline["epochs"]["mean"]
    for v in variants.values():
        v["epochs_saved_share"] = round(1 - v["epochs"]["mean"] / full, 4)
        for t in s.targets:
            key = f"epochs_to_hv{t:g}"
            if v[key]["mean"] and baseline[key]["mean"]:
                v[f"speedup_to_hv{t:g}"] = round(baseline[key]["mean"] / v[key]["mean"], 3)
    return {
        "problem": s.problem,
        "table": {"path": str(s.nb201 if s.problem in NB201 else s.table or table_path()),
                  "archs": len(curves), "horizon": horizon},
        "objectives": directions, "reference_point": ref, "true_front_size": len(true_front),
        "archs_per_search": n, "seeds": s.seeds, "min_epochs": s.min_epochs,
        "min_curves": s.min_curves, "order": "random permutation per seed",
        "no_stopping": baseline, "stopping": variants,
        "wall_s": round(time.perf_counter() - started, 1),
    }
