"""Pareto utilities: non-dominated mask and hypervolume, with per-objective directions.

Both work on a DataFrame (directions as `{column: "min"|"max"}`) or an array (directions as a
sequence aligned with its columns). Maximised objectives are negated so pymoo, which only
minimises, sees one convention. Rows with a NaN objective are never on the front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasbench_core.errors import UserError

Directions = Mapping[str, str] | Sequence[str]


def _signs(directions: Sequence[str]) -> np.ndarray:
    signs = []
    for d in directions:
        if d not in ("min", "max"):
            raise UserError(f"objective direction {d!r} is not 'min' or 'max'")
        signs.append(1.0 if d == "min" else -1.0)
    return np.asarray(signs, dtype=float)


def to_min_matrix(data: Any, directions: Directions) -> np.ndarray:
    """The objective matrix with every column turned into 'smaller is better'."""
    if isinstance(directions, Mapping):
        cols = list(directions)
        if hasattr(data, "columns"):
            missing = [c for c in cols if c not in data.columns]
            if missing:
                raise UserError(
                    f"objective column {missing[0]!r} not in table; columns: {list(data.columns)}"
                )
            F = data[cols].to_numpy(dtype=float)
        else:
            F = np.asarray(data, dtype=float)
        dirs = [directions[c] for c in cols]
    else:
        F = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=float)
        dirs = list(directions)
    if F.ndim == 1:
        F = F.reshape(-1, len(dirs)) if F.size else F.reshape(0, len(dirs))
    if F.shape[1] != len(dirs):
        raise UserError(f"{F.shape[1]} objective columns but {len(dirs)} directions")
    return F * _signs(dirs)


def pareto_mask(data: Any, directions: Directions) -> np.ndarray:
    """Boolean mask of non-dominated rows (pymoo non-dominated sorting); NaN rows are False."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = to_min_matrix(data, directions)
    mask = np.zeros(F.shape[0], dtype=bool)
    finite = np.flatnonzero(np.isfinite(F).all(axis=1))
    if finite.size:
        front = NonDominatedSorting().do(F[finite], only_non_dominated_front=True)
        mask[finite[np.asarray(front, dtype=int)]] = True
    return mask


def hypervolume(
    F: Any, ref: Sequence[float] | Mapping[str, float], directions: Directions
) -> float:
    """Hypervolume (pymoo HV) dominated by `F` up to the reference point `ref`.

    `ref` is given in the objectives' own units (e.g. top1=0, latency_ms=20); points that do not
    strictly beat it in every objective add nothing. NaN rows are ignored.
    """
    from pymoo.indicators.hv import HV

    pts = to_min_matrix(F, directions)
    if isinstance(ref, Mapping):
        if not isinstance(directions, Mapping):
            raise UserError("a reference point given by column name needs directions by column")
        ref = [ref[c] for c in directions]
    dirs = list(directions.values()) if isinstance(directions, Mapping) else list(directions)
    r = np.asarray(ref, dtype=float) * _signs(dirs)
    if r.shape != (pts.shape[1],):
        raise UserError(f"reference point has {r.size} values; expected {pts.shape[1]}")
    pts = pts[np.isfinite(pts).all(axis=1)]
    pts = pts[(pts < r).all(axis=1)]
    if pts.shape[0] == 0:
        return 0.0
    return float(HV(ref_point=r)(pts))


def plot_front(df: Any, x: str, y: str, directions: Mapping[str, str], path: Any,
               title: str = "", feasible: np.ndarray | None = None) -> None:
    """Scatter every evaluation on (x, y) with the Pareto front of `directions` highlighted.

    With a `feasible` mask, infeasible rows are drawn as crosses and the front is that of the
    feasible rows, the same rows `pareto.parquet` holds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasbench_core.atomic import atomic_path

    ok = np.ones(len(df), dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    mask = np.zeros(len(df), dtype=bool)
    if ok.any():
        mask[np.flatnonzero(ok)] = pareto_mask(df[ok], directions)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    label = "evaluated" if feasible is None else "feasible"
    ax.scatter(df[x][ok], df[y][ok], s=12, c="0.6", label=f"{label} ({int(ok.sum())})")
    if not ok.all():
        ax.scatter(df[x][~ok], df[y][~ok], s=12, c="0.8", marker="x",
                   label=f"violates constraints ({int((~ok).sum())})")
    front = df[mask].sort_values(x)
    ax.plot(front[x], front[y], "o-", color="C3", ms=5, label=f"Pareto front ({len(front)})")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
