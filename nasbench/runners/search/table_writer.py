"""Writing a search's table in both modes (supernet and tabular): as it grows, and at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasbench.progress import echo


class TableWriter:
    """Writes `evaluations.parquet` (with the evaluator's metadata) after each update and prints
    `evaluated N/budget` every 10 new rows and at the end. `evaluator` is set once it exists
    (the Evaluator takes this writer as its callback)."""

    def __init__(self, path: Path, budget: int, done: int) -> None:
        self.path, self.budget, self.done, self.shown = path, budget, done, done
        self.evaluator: Any = None

    def __call__(self, df) -> None:
        from search.evaluations import write_table

        write_table(self.path, df, self.evaluator.metadata())
        count = self.evaluator.n_new + self.done
        if count - self.shown >= 10 or count == self.budget:
            self.shown = count
            echo(f"evaluated {count}/{self.budget}")


def save_front(evaluator: Any, constraints: Any, table_path: Path, front_path: Path):
    """The final table and its feasible Pareto front, both written; returns (table, feasible
    mask, front)."""
    import search
    from search.evaluations import with_pareto, write_table

    df = evaluator.df
    feasible = search.feasible_mask(df, constraints)
    front = with_pareto(df[feasible], evaluator.directions)
    front = front[front["is_pareto"]].reset_index(drop=True)
    write_table(table_path, df, evaluator.metadata())
    write_table(front_path, front, evaluator.metadata())
    return df, feasible, front
