"""The search problem, separate from any algorithm: space + evaluator + constraints.

Optimizers see archs as integer-index vectors (`space.encode`), objectives as one minimisation
matrix (max objectives negated) and constraints as pymoo-style violations (`<= 0` is feasible).
Constraints are parsed from text such as `latency_ms <= 5` with a regex, never `eval`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pymoo.core.problem import Problem

from nasbench_core.errors import UserError
from search.evaluations import Evaluator
from search.pareto import to_min_matrix

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT = re.compile(rf"^\s*([A-Za-z_][\w@:.\-]*?)\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class Constraint:
    """`column op value`, e.g. `params <= 2e6`."""

    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def violation(self, values: np.ndarray) -> np.ndarray:
        """pymoo convention: <= 0 when satisfied; NaN (unmeasured) counts as violated."""
        v = np.asarray(values, dtype=float)
        out = v - self.value if self.op in ("<=", "<") else self.value - v
        if self.op in ("<", ">"):
            out = np.where(out == 0, np.finfo(float).eps, out)
        return np.where(np.isnan(out), np.inf, out)

    def satisfied(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        return _OPS[self.op](v, self.value) & ~np.isnan(v)


def parse_constraint(text: str, known: Sequence[str] | None = None) -> Constraint:
    """Parse `column <=|<|>=|> number`; with `known`, an unknown column is a UserError."""
    m = _CONSTRAINT.match(str(text))
    if m is None:
        raise UserError(
            f"constraint {text!r} is not of the form 'column <= number' (ops: <=, <, >=, >)"
        )
    column, op, value = m.group(1), m.group(2), float(m.group(3))
    if known is not None and column.partition("@")[0] not in known:
        raise UserError(f"constraint {text!r} names unknown column {column!r}; known: "
                        f"{', '.join(known)}")
    return Constraint(column, op, value)


STOPPED = "stopped_early"
"""The column a train-from-scratch search with early stopping marks its cut-short runs in."""


def feasible_mask(df: pd.DataFrame, constraints: Sequence[Constraint]) -> np.ndarray:
    """Rows meeting every constraint. A run stopped early (`stopped_early`) is never feasible:
    its top1 is where its curve stood when stopped, not a trained result, so it never enters a
    Pareto front, `pareto.parquet` or an export pick."""
    mask = np.ones(len(df), dtype=bool)
    if STOPPED in df.columns:
        mask &= ~df[STOPPED].fillna(False).to_numpy(dtype=bool)
    for c in constraints:
        if c.column not in df.columns:
            raise UserError(f"constraint '{c}' names column {c.column!r} which the table lacks; "
                            f"columns: {', '.join(map(str, df.columns))}")
        mask &= c.satisfied(df[c.column].to_numpy(dtype=float))
    return mask


class SearchProblem:
    """What is searched and how it is scored; optimizers own only the search strategy."""

    def __init__(self, evaluator: Evaluator, constraints: Sequence[Constraint] = (), *,
                 zero_cost: Callable[[Sequence[dict], str], Sequence[float]] | None = None):
        self.evaluator = evaluator
        self.zero_cost = zero_cost
        """`(archs, proxy) -> scores` (a `search.zero_cost.ArchScorer`) for a zero-cost warm
        start; costs no true evaluations."""
        self.space = evaluator.space
        self.constraints = list(constraints)
        metric_names = [m.name for m in evaluator.metrics]
        for c in self.constraints:
            if c.column not in metric_names:
                raise UserError(f"constraint '{c}' names {c.column!r}, which is not measured; "
                                f"measured: {', '.join(metric_names)}")
        self.generation = evaluator.next_generation  # a resumed search keeps counting

    @property
    def n_var(self) -> int:
        return len(self.space)

    @property
    def n_obj(self) -> int:
        return len(self.evaluator.objectives)

    @property
    def xu(self) -> np.ndarray:
        return self.space.num_choices - 1

    @property
    def directions(self) -> dict[str, str]:
        return self.evaluator.directions

    def archs(self, X: np.ndarray) -> list[dict]:
        return [self.space.decode(x) for x in np.atleast_2d(X)]

    def scores(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """(F, G): minimisation matrix of the objectives and constraint violations."""
        F = to_min_matrix(rows, self.directions)
        if not self.constraints:
            return F, None
        G = np.column_stack([c.violation(rows[c.column].to_numpy(dtype=float))
                             for c in self.constraints])
        return F, G

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """True evaluation (cached); may raise BudgetExhausted."""
        return self.scores(self.evaluator.evaluate(self.archs(X), self.generation))

    def as_pymoo(self):
        return PymooProblem(self.n_var, self.n_obj, len(self.constraints), self.xu, self.evaluate)


class PymooProblem(Problem):
    """A vectorised integer pymoo Problem backed by `fn(X) -> (F, G)`."""

    def __init__(self, n_var: int, n_obj: int, n_ieq: int, xu: np.ndarray, fn: Callable):
        super().__init__(n_var=n_var, n_obj=n_obj, n_ieq_constr=n_ieq, xl=0,
                         xu=np.asarray(xu), vtype=int)
        self.fn = fn

    def _evaluate(self, X, out, *args, **kwargs):
        F, G = self.fn(np.asarray(X).round().astype(np.int64))
        out["F"] = F
        if G is not None:
            out["G"] = G
