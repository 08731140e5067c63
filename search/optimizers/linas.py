"""LINAS (DyNAS-T): NSGA-II on lightly trained predictors, true evaluations only for its picks.

Each round: fit one regressor per objective (and per constrained column) on every measured row,
except for values an objective gives exactly and cheaply (`Objective.batch`: an analytic
parameter count, a fitted latency predictor), which are used as they are; run NSGA-II on that
with a large inner budget, then measure the best-ranked archs of its final population that
the table does not have yet. The first round measures the smallest
and largest archs plus random ones; with `zc_warm_start`, the top of a proxy-ranked random pool
comes right after the extremes, in place of random archs (`search.optimizers.zc_warm_start`).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import pydantic

from search.evaluations import BudgetExhausted
from search.optimizers.base import Optimizer, PositiveInt, register_optimizer, settings_dataclass
from search.optimizers.pymoo_search import initial_sampling, integer_operators, rank_rows
from search.optimizers.zc_warm_start import ProxyFeatures, ProxyName, ZCWarmStart, warm_start_archs
from search.predictors import make_regressor, select_regressor
from search.predictors.regressors import fit_quietly, list_regressors
from search.problem import PymooProblem, SearchProblem

InnerCount = Annotated[int, pydantic.Field(ge=1, le=10_000)]
"""The inner NSGA-II on the predictors runs pop_size x generations predictions per step."""


def _regressor_name(name: str) -> str:
    if name not in list_regressors():
        raise ValueError(f"unknown regressor {name!r}; known: {list_regressors()}")
    return name


RegressorName = Annotated[str, pydantic.AfterValidator(_regressor_name)]


@register_optimizer("linas", help="predictor-assisted NSGA-II (DyNAS-T LINAS)")
@settings_dataclass
class LINAS(Optimizer):
    pop_size: PositiveInt = 20
    inner_pop_size: InnerCount = 50
    inner_generations: InnerCount = 40
    regressors: Annotated[list[RegressorName], pydantic.Field(min_length=1, max_length=20)] = field(
        default_factory=lambda: ["ridge", "svr"])
    folds: Annotated[int, pydantic.Field(ge=2, le=100)] = 3
    seed_extremes: bool = True
    zc_warm_start: ZCWarmStart | None = None
    zc_features: list[ProxyName] = field(default_factory=list)
    """Zero-cost proxies whose scores join the one-hot encoding as predictor features."""

    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        ev = problem.evaluator
        rng = np.random.default_rng(seed)
        proxy_features = ProxyFeatures(problem, self.zc_features)
        try:
            fresh = len(ev.df) == 0
            if fresh and self.seed_extremes:
                ev.evaluate([problem.space.smallest(), problem.space.largest()][: self.pop_size])
            if fresh and self.zc_warm_start is not None:
                ev.evaluate(warm_start_archs(problem, self.zc_warm_start, seed))
            self._measure_random(problem, rng, self.pop_size - len(ev.df))
            stall = 0
            while ev.remaining > 0 and stall < self.max_stall:
                before = ev.n_new
                picks = self._propose(problem, seed + problem.generation, proxy_features)
                k = int(min(self.pop_size, ev.remaining))
                new = [a for a in picks if not ev.has(a)][:k]
                problem.generation += 1
                ev.evaluate(new, problem.generation)
                self._measure_random(problem, rng, k - len(new))
                stall = stall + 1 if ev.n_new == before else 0
        except BudgetExhausted:
            return

    def _measure_random(self, problem: SearchProblem, rng: np.random.Generator, n: int) -> None:
        """`n` unseen random archs (fewer when the budget or 100n draws run out), evaluated as
        one batch so that concurrent workers share it."""
        ev, space = problem.evaluator, problem.space
        n = int(min(n, ev.remaining))
        picks: dict[str, dict] = {}
        for _ in range(100 * max(n, 0)):
            if len(picks) >= n:
                break
            arch = space.canonical(space.sample(rng))
            if not ev.has(arch):
                picks.setdefault(space.arch_id(arch), arch)
        if picks:
            ev.evaluate(list(picks.values()), problem.generation)

    def _propose(self, problem: SearchProblem, seed: int, proxy_features: ProxyFeatures) -> list[dict]:
        """Archs ranked best-first by NSGA-II on the predicted objectives and constraints."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.optimize import minimize

        space, df = problem.space, problem.evaluator.df
        def features(idx: np.ndarray) -> np.ndarray:
            feats = one_hot_rows(space, idx)
            if not proxy_features.proxies:
                return feats
            return np.hstack([feats, proxy_features([space.decode(x) for x in np.atleast_2d(idx)])])

        X = features(np.stack([space.encode(space.parse(a)) for a in df["arch"]]))
        columns = list(problem.directions)
        columns += [c.column for c in problem.constraints if c.column not in columns]
        exact = {m.name: m.batch for m in problem.evaluator.metrics
                 if m.batch is not None and m.name in columns}
        models = {}
        for col in (c for c in columns if c not in exact):  # no surrogate for exact values
            y = df[col].to_numpy(dtype=float)
            ok = np.isfinite(y)
            choice = select_regressor(X[ok], y[ok], candidates=self.regressors, folds=self.folds,
                                      seed=seed)
            models[col] = fit_quietly(make_regressor(choice.name, choice.params, seed=seed),
                                      X[ok], y[ok])

        def predict(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            feats = features(idx)
            values = {c: m.predict(feats) for c, m in models.items()}
            if exact:
                archs = [space.decode(x) for x in np.atleast_2d(idx)]
                values.update({c: np.asarray(fn(archs), dtype=float) for c, fn in exact.items()})
            return problem.scores(pd.DataFrame(values))

        inner = PymooProblem(problem.n_var, problem.n_obj, len(problem.constraints), problem.xu,
                             predict)
        algo = NSGA2(pop_size=self.inner_pop_size,
                     sampling=initial_sampling(problem, self.inner_pop_size, seed),
                     **integer_operators())
        res = minimize(inner, algo, ("n_gen", self.inner_generations), seed=seed, verbose=False)
        Xf = res.pop.get("X").round().astype(np.int64)
        return [space.decode(Xf[i]) for i in rank_rows(*predict(Xf))]


def one_hot_rows(space, idx: np.ndarray) -> np.ndarray:
    """`space.one_hot` for a whole matrix of integer encodings at once (the inner loop's hot path)."""
    idx = np.atleast_2d(idx).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(space.num_choices)[:-1]])
    out = np.zeros((len(idx), int(space.num_choices.sum())))
    out[np.arange(len(idx))[:, None], offsets + idx] = 1.0
    return out
