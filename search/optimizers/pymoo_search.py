"""pymoo evolutionary optimizers (NSGA-II, NSGA-III, AGE-MOEA) on the integer arch encoding.

The algorithm is driven ask/tell so the budget counts true evaluations exactly: archs already in
the table cost nothing, and the loop stops at the first new evaluation past the budget. A
resumed search seeds its first population with the best rows already in the table.
"""

from __future__ import annotations

from math import comb
from pathlib import Path
from typing import Annotated

import numpy as np
import pydantic
from pymoo.core.evaluator import Evaluator as PymooEvaluator
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.termination.max_gen import MaximumGenerationTermination
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from search.evaluations import BudgetExhausted
from search.optimizers.base import Optimizer, PositiveInt, register_optimizer, settings_dataclass
from search.problem import SearchProblem


def integer_operators(eta: float = 3.0) -> dict:
    """Integer variation as in pymoo's mixed-integer guide: SBX + PM on floats, then rounding."""
    return {
        "crossover": SBX(prob=1.0, eta=eta, vtype=float, repair=RoundingRepair()),
        "mutation": PM(prob=1.0, eta=eta, vtype=float, repair=RoundingRepair()),
        "eliminate_duplicates": True,
    }


def rank_rows(F: np.ndarray, G: np.ndarray | None) -> np.ndarray:
    """Row order best-first: feasible first, then by non-dominated front, then spread.

    Within a front, rows with a larger crowding distance come first (NSGA-II's survival
    order), so taking the first k rows samples the whole front rather than one end of it.
    """
    cv = np.zeros(len(F)) if G is None else np.clip(G, 0, None).sum(axis=1)
    rank = np.full(len(F), len(F), dtype=float)
    crowd = np.zeros(len(F))
    finite = np.flatnonzero(np.isfinite(F).all(axis=1))
    if finite.size:
        fronts = NonDominatedSorting().do(F[finite])
        for r, front in enumerate(fronts):
            rows = finite[front]
            rank[rows] = r
            crowd[rows] = calc_crowding_distance(F[rows])
    return np.lexsort((-crowd, rank, cv))


def initial_sampling(problem: SearchProblem, pop_size: int, seed: int, extremes: bool = True):
    """First population: best rows of the table (on resume), else the smallest and largest
    archs (`extremes`, they anchor both ends of the front), topped up with random archs."""
    space, df = problem.space, problem.evaluator.df
    if len(df):
        F, G = problem.scores(df)
        X = [space.encode(space.parse(df["arch"].iloc[i])) for i in rank_rows(F, G)[:pop_size]]
    elif extremes:
        X = [space.encode(space.smallest()), space.encode(space.largest())][:pop_size]
    else:
        return IntegerRandomSampling()
    rng = np.random.default_rng(seed)
    seen = {tuple(x) for x in X}
    for _ in range(100 * pop_size):
        if len(X) >= pop_size:
            break
        x = space.encode(space.sample(rng))
        if tuple(x) not in seen:
            seen.add(tuple(x))
            X.append(x)
    return np.asarray(X, dtype=np.int64)


def run_ask_tell(algorithm, problem: SearchProblem, seed: int, max_stall: int) -> None:
    """Drive a pymoo algorithm on true evaluations until the budget or a stall ends it."""
    pymoo_problem = problem.as_pymoo()
    algorithm.setup(pymoo_problem, termination=MaximumGenerationTermination(10**9), seed=seed,
                    verbose=False)
    ev, stall = problem.evaluator, 0
    while ev.remaining > 0 and stall < max_stall:
        pop = algorithm.ask()
        if pop is None:  # pymoo has terminated: no unseen offspring left (exhausted space)
            break
        before = ev.n_new
        if len(pop):
            try:
                PymooEvaluator().eval(pymoo_problem, pop)
            except BudgetExhausted:
                break
            algorithm.tell(infills=pop)
        problem.generation += 1
        stall = stall + 1 if ev.n_new == before else 0


@settings_dataclass
class _PymooOptimizer(Optimizer):
    pop_size: PositiveInt = 20
    eta: Annotated[float, pydantic.Field(gt=0, le=1000)] = 3.0
    seed_extremes: bool = True

    def make(self, problem: SearchProblem, seed: int):
        raise NotImplementedError

    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        run_ask_tell(self.make(problem, seed), problem, seed, self.max_stall)


@register_optimizer("nsga2", help="pymoo NSGA-II on the integer encoding (default)")
@settings_dataclass
class NSGA2Search(_PymooOptimizer):
    def make(self, problem: SearchProblem, seed: int):
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=self.pop_size,
                     sampling=initial_sampling(problem, self.pop_size, seed, self.seed_extremes),
                     **integer_operators(self.eta))


def das_dennis_partitions(n_obj: int, pop_size: int) -> int:
    """The most Das-Dennis partitions whose reference directions still fit in `pop_size`."""
    p = 1
    while comb(p + 1 + n_obj - 1, n_obj - 1) <= pop_size:
        p += 1
    return p


@register_optimizer("nsga3", help="pymoo NSGA-III with Das-Dennis reference directions")
@settings_dataclass
class NSGA3Search(_PymooOptimizer):
    def make(self, problem: SearchProblem, seed: int):
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        ref_dirs = get_reference_directions(
            "das-dennis", problem.n_obj,
            n_partitions=das_dennis_partitions(problem.n_obj, self.pop_size))
        return NSGA3(ref_dirs=ref_dirs, pop_size=self.pop_size,
                     sampling=initial_sampling(problem, self.pop_size, seed, self.seed_extremes),
                     **integer_operators(self.eta))


@register_optimizer("agemoea", help="pymoo AGE-MOEA (adaptive geometry; suits 3+ objectives)")
@settings_dataclass
class AGEMOEASearch(_PymooOptimizer):
    def make(self, problem: SearchProblem, seed: int):
        from pymoo.algorithms.moo.age import AGEMOEA

        return AGEMOEA(pop_size=self.pop_size,
                       sampling=initial_sampling(problem, self.pop_size, seed, self.seed_extremes),
                       **integer_operators(self.eta))
