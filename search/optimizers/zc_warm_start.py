"""Zero-cost warm start: rank a large random pool by a proxy, measure its top first.

A setting of the optimizers that measure an initial population (`random`, `linas`):
`zc_warm_start: {proxy: synflow, pool: 500, top: 20}`. Scoring the pool costs no true
evaluations; the scorer is the problem's `zero_cost` (`search.zero_cost.ArchScorer`).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pydantic

from nasbench_core.errors import UserError
from search.optimizers.base import PositiveInt
from search.problem import SearchProblem


def _proxy_name(name: str) -> str:
    from search.zero_cost import list_proxies

    if name not in list_proxies():
        raise ValueError(f"unknown zero-cost proxy {name!r}; known: {', '.join(list_proxies())}")
    return name


ProxyName = Annotated[str, pydantic.AfterValidator(_proxy_name)]


class ZCWarmStart(pydantic.BaseModel):
    """Score `pool` distinct random archs with `proxy`; the `top` best are measured first.
    (A model, not a settings dataclass: a strict dataclass field takes no dict from YAML.)"""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)

    proxy: ProxyName
    pool: PositiveInt = 500
    top: PositiveInt = 20


def warm_start_archs(problem: SearchProblem, warm: ZCWarmStart, seed: int) -> list[dict]:
    """The `warm.top` archs of a seeded random pool with the highest proxy scores, best first
    (ties keep pool order; a NaN score ranks last)."""
    if problem.zero_cost is None:
        raise UserError("zc_warm_start needs a zero-cost scorer (SearchProblem(zero_cost=...))")
    pool = distinct_sample(problem.space, warm.pool, np.random.default_rng([seed, 0x2C]))
    scores = np.asarray(problem.zero_cost(pool, warm.proxy), dtype=float)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return [pool[i] for i in order[: warm.top]]


def distinct_sample(space, n: int, rng: np.random.Generator) -> list[dict]:
    """Up to `n` random archs with distinct ids (fewer when the space is smaller)."""
    n = min(n, space.count(distinct=True))
    seen: dict[str, dict] = {}
    for _ in range(100 * n):
        if len(seen) >= n:
            break
        arch = space.canonical(space.sample(rng))
        seen.setdefault(space.arch_id(arch), arch)
    return list(seen.values())


class ProxyFeatures:
    """Zero-cost scores of archs as predictor features (LINAS `zc_features`), each arch scored
    once per proxy; signed log scale, since proxies span orders of magnitude."""

    def __init__(self, problem: SearchProblem, proxies: list[str]):
        if proxies and problem.zero_cost is None:
            raise UserError("zc_features needs a zero-cost scorer (SearchProblem(zero_cost=...))")
        self.problem, self.proxies = problem, list(proxies)
        self._cache: dict[tuple[str, str], float] = {}

    def __call__(self, archs: list[dict]) -> np.ndarray:
        space = self.problem.space
        ids = [space.arch_id(a) for a in archs]
        columns = []
        for proxy in self.proxies:
            todo = {aid: a for aid, a in zip(ids, archs, strict=True) if (proxy, aid) not in self._cache}
            if todo:
                scores = self.problem.zero_cost(list(todo.values()), proxy)
                self._cache.update({(proxy, aid): float(v) for aid, v in zip(todo, scores, strict=True)})
            columns.append([self._cache[(proxy, aid)] for aid in ids])
        z = np.nan_to_num(np.asarray(columns, dtype=float).T.reshape(len(archs), len(self.proxies)))
        return np.sign(z) * np.log1p(np.abs(z))
