"""Warm start: rows that earlier searches measured, imported into a new search's table.

An imported row is an evaluation the optimizer does not pay for again: population-based
optimizers rank the table to seed their first population, LINAS fits its predictors on it, and
the evaluator never re-measures its arch. That is only sound when the value would be the same
here, so a source table must match the new search on the space, the device key, the fixed
calibration subset and the supernet it measured, and hold every metric the new search needs;
otherwise the import is refused with one line naming the run and the difference.

Imported rows keep their values, arch ids and timestamps; their `source` becomes `imported`
so that budgets (which count this run's own evaluations) and readers can tell them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from nasbench_core.errors import UserError

IMPORTED = "imported"


@dataclass(frozen=True)
class SourceTable:
    """An earlier search's table, its metadata and the supernet it measured (manifest)."""

    name: str
    table: pd.DataFrame
    metadata: Mapping
    supernet: Mapping


def imported_rows(sources: Sequence[SourceTable], *, have: pd.DataFrame | None) -> pd.DataFrame | None:
    """The sources' rows whose arch `have` lacks (the first source wins on repeats), with
    `source` set to `imported`; None when nothing is left to import. Check each source with
    `check_source` first."""
    parts = []
    seen = set() if have is None else set(have["arch_id"])
    for src in sources:
        rows = src.table[~src.table["arch_id"].isin(seen)]
        seen.update(rows["arch_id"])
        if len(rows):
            parts.append(rows.assign(source=IMPORTED))
    return pd.concat(parts, ignore_index=True) if parts else None


def own_rows(table: pd.DataFrame | None) -> int:
    """Rows this run measured itself: what its budget counts."""
    if table is None:
        return 0
    return int((table["source"] != IMPORTED).sum())


def check_source(src: SourceTable, *, space_fingerprint: str, device: str, calibration: str,
                 supernet: Mapping, metrics: Sequence[str]) -> None:
    """One line naming the run and the first difference that would make its values wrong here."""
    meta = src.metadata
    what = f"search.warm_start: {src.name}"
    if meta.get("space_fingerprint") != space_fingerprint:
        raise UserError(f"{what} searched space {meta.get('space_fingerprint')}, not {space_fingerprint}")
    if meta.get("device") != device:
        raise UserError(f"{what} was measured on device {meta.get('device')!r}, not {device!r}")
    if meta.get("calibration") != calibration:
        raise UserError(f"{what} measured accuracy on calibration subset {meta.get('calibration')!r}, "
                        f"not {calibration!r} (other data, batch size, seed or evaluation settings)")
    if dict(src.supernet) != dict(supernet):
        raise UserError(f"{what} measured another supernet ({_describe(src.supernet)}, not "
                        f"{_describe(supernet)})")
    missing = [m for m in metrics if m not in src.table.columns]
    if missing:
        raise UserError(f"{what} did not measure {', '.join(missing)}")


def _describe(info: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(info.items()))
