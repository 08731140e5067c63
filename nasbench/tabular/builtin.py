"""The built-in tabular benchmark: every arch of a small space trained and measured on digits.

The table ships with the package (`nasbench/data_files/tabular_digits.parquet`); the script that
made it is `python -m nasbench.tabular.generate`. Queries are lookups, so optimizer comparisons
take seconds and repeat exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasbench.tabular.builtin_space import SPACE
from nasbench_core.errors import UserError
from nasbench_core.readers import read_parquet
from supernets.space import SearchSpace

OBJECTIVE_DIRECTIONS = {"top1": "max", "latency_ms": "min", "macs": "min", "params": "min"}
OBJECTIVE_UNITS = {"top1": "fraction", "latency_ms": "ms", "macs": "MACs", "params": "params"}
TABLE_FILE = "tabular_digits.parquet"


@dataclass
class TabularBenchmark:
    """A search space whose every arch has recorded objectives."""

    name: str
    space: SearchSpace
    table: pd.DataFrame  # indexed by arch_id
    metadata: dict[str, str]

    def query(self, arch: dict[str, Any]) -> dict[str, float]:
        arch_id = self.space.arch_id(arch)
        row = self.table.loc[arch_id]
        return {name: float(row[name]) for name in OBJECTIVE_DIRECTIONS if name in row}

    def objectives(self, names: list[str]) -> list[Any]:
        """`search.objectives.Objective`s that look values up in the table."""
        from search.objectives import Objective

        unknown = [n for n in names if n not in OBJECTIVE_DIRECTIONS or n not in self.table.columns]
        if unknown:
            raise UserError(f"benchmark {self.name!r} has no objective {unknown[0]!r}; "
                            f"it has: {', '.join(c for c in OBJECTIVE_DIRECTIONS if c in self.table.columns)}")
        return [Objective(n, lambda arch, n=n: self.query(arch)[n], OBJECTIVE_DIRECTIONS[n],
                          unit=OBJECTIVE_UNITS[n], source="measured") for n in names]

    def matrix(self, names: list[str]) -> np.ndarray:
        """All archs' values of `names`, one row per arch: the exhaustive reference."""
        return self.table[names].to_numpy(dtype=float)

    def curves(self) -> np.ndarray:
        """Every arch's learning curve (`top1_curve`: val top-1 after each training epoch), one
        row per arch; one line when the table has none."""
        if "top1_curve" not in self.table.columns:
            raise UserError("this tabular benchmark has no learning curves (`top1_curve`); add them "
                            "with `python -m nasbench.tabular.generate --add-curves --out TABLE`")
        return np.vstack(self.table["top1_curve"].to_numpy()).astype(float)


def table_path() -> Path:
    return Path(str(resources.files("nasbench") / "data_files" / TABLE_FILE))


def load_builtin(path: str | Path | None = None) -> TabularBenchmark:
    """Open the shipped table (or a regenerated one at `path`)."""
    target = Path(path) if path else table_path()
    if not target.exists():
        raise UserError(f"tabular benchmark table not found: {target} "
                        "(regenerate it with `python -m nasbench.tabular.generate`)")
    raw = read_parquet(target)
    metadata = {k.decode(): v.decode() for k, v in (raw.schema.metadata or {}).items()
                if not k.startswith(b"pandas")}
    space = SearchSpace.from_json(metadata["space"]) if "space" in metadata else SPACE
    if space != SPACE:
        raise UserError(f"{target}: table was made for another search space")
    table = raw.to_pandas().set_index("arch_id", drop=False)
    if len(table) != int(SPACE.cardinality):
        raise UserError(f"{target}: expected {int(SPACE.cardinality)} archs, found {len(table)}")
    return TabularBenchmark("digits", space, table, metadata)
