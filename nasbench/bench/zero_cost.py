"""`nasbench bench zero_cost`: how well zero-cost proxies rank the built-in tabular benchmark's
archs, and whether a zero-cost warm start makes LINAS reach a hypervolume in fewer true
evaluations.

Ranking: every proxy scores `archs` archs of the table (all 216 by default), each built as in
`nasbench.tabular.generate` (`build_model`, initialised with the run's seed) and scored at init
on one seeded batch of the digits training split; Kendall τ-b against the table's top1 (trained
10 epochs). MACs and params are the naive baselines every proxy should beat.

Warm start: LINAS on top1 (max) x latency_ms (min), table lookups as true evaluations, without
and with `zc_warm_start` (a random pool of `pool` archs ranked by the proxy, its `top` measured
first); the scores come from the ranking step, so the pool costs nothing. Reported per seed:
true evaluations until the normalised hypervolume (HV / the exhaustive table's, reference point
as in `nasbench bench optimizers`) first reaches each target; a seed that never gets there is
`null`, and `mean_censored` counts it as the budget (a lower bound).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from pydantic import Field, PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, names_of

OBJECTIVES = ["top1", "latency_ms"]


def _proxies() -> list[str]:
    from search.zero_cost import list_proxies

    return list_proxies()


class ZeroCostSettings(BenchSettings):
    table: str | None = None  # a tabular benchmark's Parquet file; None: the shipped table
    archs: PositiveInt = 216  # archs ranked (a seeded subset when fewer than the table's)
    batch: Annotated[int, Field(ge=2)] = 16  # samples in the scoring batch
    proxies: names_of(_proxies, "zero-cost proxy") = ["grad_norm", "gradsign", "jacov", "nwot",
                                                     "snip", "synflow"]
    warm_proxies: names_of(_proxies, "zero-cost proxy") = ["gradsign", "synflow", "nwot"]
    seeds: PositiveInt = 3
    budget: PositiveInt = 60
    pop_size: PositiveInt = 20
    pool: PositiveInt = 100
    top: PositiveInt = 10
    targets: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = [
        0.8, 0.9, 0.95]

    quick_defaults = {"archs": 10, "batch": 8, "proxies": ["synflow", "nwot"],
                      "warm_proxies": ["synflow"], "seeds": 1, "budget": 6, "pop_size": 6,
                      "pool": 10, "top": 3, "targets": [0.5]}


class TableScorer:
    """Scores of the built-in space's archs, each model freshly initialised with `seed` as in
    `nasbench.tabular.generate` and scored on one seeded digits batch; cached by arch_id so the
    warm start's pool reuses the ranking step's scores."""

    def __init__(self, bench, batch: int, seed: int):
        import torch

        from nasbench.data import load_dataset
        from nasbench.tabular.builtin_space import build_model
        from nasbench.tabular.generate import RESOLUTION
        from search.zero_cost import ArchScorer

        data = load_dataset(name="digits", resolution=RESOLUTION, channels=1, seed=seed)
        x, y = next(iter(data.loader(data.train_dataset, shuffle=True, batch_size=batch)))

        def build(arch: dict) -> torch.nn.Module:
            torch.manual_seed(seed)
            return build_model(arch, in_chans=1, num_classes=data.num_classes)

        self.space, self.scorer = bench.space, ArchScorer(build, x, y)
        self.cache: dict[tuple[str, str], float] = {}

    def __call__(self, archs: list[dict], proxy: str) -> list[float]:
        ids = [self.space.arch_id(a) for a in archs]
        todo = {i: a for i, a in zip(ids, archs, strict=True) if (proxy, i) not in self.cache}
        for i, v in zip(todo, self.scorer(list(todo.values()), proxy), strict=True):
            self.cache[proxy, i] = v
        return [self.cache[proxy, i] for i in ids]


def rank_quality(bench, scorer: TableScorer, archs: list[dict],
                 proxies: list[str]) -> dict[str, Any]:
    """Kendall τ-b of each proxy (and of -params, -MACs) with the table's top1 over `archs`."""
    from search import kendall_tau

    rows = bench.table.loc[[bench.space.arch_id(a) for a in archs]]
    top1 = rows["top1"].to_numpy(dtype=float)
    out: dict[str, Any] = {p: round(kendall_tau(top1, scorer(archs, p)), 4) for p in proxies}
    for naive in ("params", "macs"):
        if naive in rows:
            out[f"{naive} (baseline)"] = round(kendall_tau(top1, rows[naive].to_numpy(float)), 4)
    return out


def evaluations_to_reach(df, directions: dict[str, str], ref: dict[str, float],
                         true_hv: float, targets: list[float]) -> dict[float, int | None]:
    """The first n whose first-n-rows normalised HV reaches each target (None: never)."""
    from search import hypervolume

    hv = [hypervolume(df.head(n), ref, directions) / true_hv for n in range(1, len(df) + 1)]
    return {t: next((n for n, v in enumerate(hv, start=1) if v >= t), None) for t in targets}


def warm_start_comparison(bench, scorer: TableScorer, s: ZeroCostSettings,
                          seeds: list[int]) -> dict[str, Any]:
    import search
    from nasbench.bench.optimizers import reference_point
    from nasbench.tabular.builtin import OBJECTIVE_DIRECTIONS

    directions = {n: OBJECTIVE_DIRECTIONS[n] for n in OBJECTIVES}
    ref = reference_point(bench, OBJECTIVES)
    true_hv = search.hypervolume(bench.table, ref, directions)
    space = bench.space
    variants: dict[str, dict] = {"none": {}}
    for p in s.warm_proxies:
        variants[p] = {"zc_warm_start": {"proxy": p, "pool": s.pool, "top": s.top}}
    results: dict[str, Any] = {}
    for name, extra in variants.items():
        reach: dict[float, list[int | None]] = {t: [] for t in s.targets}
        final, walls = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            ev = search.Evaluator(space, bench.objectives(OBJECTIVES), budget=s.budget, seed=seed)
            opt = search.create_optimizer("linas", pop_size=s.pop_size, **extra)
            opt.run(search.SearchProblem(ev, zero_cost=scorer), seed=seed)
            walls.append(time.perf_counter() - t0)
            for t, n in evaluations_to_reach(ev.df, directions, ref, true_hv, s.targets).items():
                reach[t].append(n)
            final.append(search.hypervolume(ev.df, ref, directions) / true_hv)
        results[name] = {
            **{f"evals_to_hv{t:g}": _reach_stats(reach[t], s.budget) for t in s.targets},
            f"hv@{s.budget}": {"mean": round(float(np.mean(final)), 4),
                               "per_seed": [round(float(v), 4) for v in final]},
            "wall_s_per_seed": round(float(np.mean(walls)), 2),
        }
    return {"objectives": directions, "reference_point": ref, "true_front_hv": true_hv,
            "optimizer": "linas", "budget": s.budget, "pop_size": s.pop_size,
            "warm_start": {"pool": s.pool, "top": s.top}, "runs": results}


def _reach_stats(values: list[int | None], budget: int) -> dict[str, Any]:
    censored = [budget if v is None else v for v in values]
    return {"per_seed": values, "reached": sum(v is not None for v in values),
            "mean_censored": round(float(np.mean(censored)), 2)}


def pick_archs(bench, n: int, seed: int) -> list[dict]:
    """All of the table's archs, or a seeded subset of `n` of them."""
    rows = bench.table.sort_index()
    if n < len(rows):
        rows = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
    return [bench.space.parse(a) for a in rows["arch"]]


@benchmark("zero_cost", help="Kendall τ of zero-cost proxies with top1 on the built-in tabular "
           "benchmark, and LINAS true evaluations to a target HV with vs without a ZC warm start.",
           options=ZeroCostSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    from nasbench.tabular.builtin import load_builtin, table_path

    s = ZeroCostSettings.of(opts)
    bench = load_builtin(s.table)
    seeds = [opts.seed + i for i in range(s.seeds)]
    scorer = TableScorer(bench, s.batch, opts.seed)
    t0 = time.perf_counter()
    ranked = pick_archs(bench, s.archs, opts.seed)
    tau = rank_quality(bench, scorer, ranked, s.proxies)
    score_wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    warm = warm_start_comparison(bench, scorer, s, seeds)
    return {
        "table": {"path": str(s.table or table_path()), "archs": len(bench.table),
                  **{k: v for k, v in bench.metadata.items() if k != "space"}},
        "ranking": {"archs": len(ranked), "batch": s.batch, "init_seed": opts.seed,
                    "kendall_tau_top1": tau, "score_wall_s": round(score_wall, 2),
                    "score_s_per_arch_per_proxy": round(score_wall / len(ranked)
                                                        / len(s.proxies), 4)},
        "warm_start": warm,
        "warm_start_wall_s": round(time.perf_counter() - t1, 2),
        "seeds": seeds,
    }
