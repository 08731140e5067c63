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


class ZCWarmStart(pydantic.BaseModel):
    """Score `pool` distinct random archs with `proxy`; the `top` best are measured first.
    (A model, not a settings dataclass: a strict dataclass field takes no dict from YAML.)"""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)

    proxy: Annotated[str, pydantic.AfterValidator(_proxy_name)]
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
