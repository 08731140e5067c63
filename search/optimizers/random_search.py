"""Uniform random search: the baseline every other optimizer must beat (optionally after a
zero-cost warm start: the top of a proxy-ranked pool is measured first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.evaluations import BudgetExhausted
from search.optimizers.base import Optimizer, PositiveInt, register_optimizer, settings_dataclass
from search.optimizers.zc_warm_start import ZCWarmStart, warm_start_archs
from search.problem import SearchProblem


@register_optimizer("random", help="uniform random archs until the budget is spent")
@settings_dataclass
class RandomSearch(Optimizer):
    batch_size: PositiveInt = 20
    zc_warm_start: ZCWarmStart | None = None

    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        ev = problem.evaluator
        rng = np.random.default_rng(seed)
        stall = 0
        if self.zc_warm_start is not None and len(ev.df) == 0:
            try:
                ev.evaluate(warm_start_archs(problem, self.zc_warm_start, seed), problem.generation)
            except BudgetExhausted:
                return
            problem.generation += 1
        while ev.remaining > 0 and stall < self.max_stall:
            before = ev.n_new
            archs = [problem.space.sample(rng) for _ in range(self.batch_size)]
            try:
                ev.evaluate(archs, problem.generation)
            except BudgetExhausted:
                break
            problem.generation += 1
            stall = stall + 1 if ev.n_new == before else 0
