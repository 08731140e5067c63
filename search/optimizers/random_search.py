"""Uniform random search: the baseline every other optimizer must beat."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.evaluations import BudgetExhausted
from search.optimizers.base import Optimizer, PositiveInt, register_optimizer, settings_dataclass
from search.problem import SearchProblem


@register_optimizer("random", help="uniform random archs until the budget is spent")
@settings_dataclass
class RandomSearch(Optimizer):
    batch_size: PositiveInt = 20

    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        ev = problem.evaluator
        rng = np.random.default_rng(seed)
        stall = 0
        while ev.remaining > 0 and stall < self.max_stall:
            before = ev.n_new
            archs = [problem.space.sample(rng) for _ in range(self.batch_size)]
            try:
                ev.evaluate(archs, problem.generation)
            except BudgetExhausted:
                break
            problem.generation += 1
            stall = stall + 1 if ev.n_new == before else 0
