"""Pareto utilities: non-dominated mask and hypervolume, with per-objective directions.

Both work on a DataFrame (directions as `{column: "min"|"max"}`) or an array (directions as a
sequence aligned with its columns). Maximised objectives are negated so pymoo, which only
minimises, sees one convention. Rows with a NaN objective are never on the front.
`plot_front` draws a table's front as a staircase on a matplotlib Axes.
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


# -- plotting ---------------------------------------------------------------------------------
_LABELS = {
    "top1": "top-1 accuracy", "top1_pred": "predicted top-1 accuracy",
    "latency_ms": "latency", "latency_ms_pred": "predicted latency",
    "macs": "MACs", "params": "params",
}
# stored unit -> (unit shown on the axis, factor from stored to shown values)
_SHOWN = {"fraction": ("%", 100.0), "MACs": ("M", 1e-6), "count": ("M", 1e-6)}


def _unit(column: str, units: Mapping[str, str]) -> str:
    """The stored unit: from the table metadata, else the registered objective of that name."""
    from search.objectives import list_objectives, objective_kind

    if units.get(column):
        return units[column]
    return objective_kind(column).unit if column in list_objectives() else ""


def axis_label(column: str, units: Mapping[str, str] | None = None) -> tuple[str, float]:
    """The axis label with its display unit, and the factor turning stored values into shown
    ones (fractions become %, MAC and parameter counts millions)."""
    unit = _unit(column, units or {})
    shown, factor = _SHOWN.get(unit, (unit, 1.0))
    name = _LABELS.get(column, column)
    return (f"{name} ({shown})" if shown else name), factor


def _plot_columns(directions: Mapping[str, str], x: str | None, y: str | None) -> tuple[str, str]:
    """Cost on x and quality on y (first `min`, first `max`), else the first two objectives."""
    names = list(directions)
    if not names:
        raise UserError("nothing to plot: no objective directions")
    mins = [n for n in names if directions[n] == "min"]
    maxs = [n for n in names if directions[n] == "max"]
    default = (mins[0], maxs[0]) if mins and maxs else tuple((names * 2)[:2])
    x, y = x or default[0], y or default[1]
    for column in (x, y):
        if column not in directions:
            raise UserError(f"plot axis {column!r} is not an objective; objectives: {', '.join(names)}")
    return x, y


def plot_front(df: Any, directions: Mapping[str, str], ax: Any = None, *, x: str | None = None,
               y: str | None = None, feasible: np.ndarray | None = None,
               title: str | None = None) -> Any:
    """Scatter every row of `df` on (x, y) and draw the Pareto front of the feasible rows as a
    staircase, so the region the front attains (dominates) is visible; returns the Axes.

    Infeasible rows (`feasible` False) are crosses and never on the front. The front is the 2-D
    front of (x, y). Units come from `df.attrs["units"]` (set by `read_table`), else from the
    objective registry by column name. Draws on `ax`, or on a new `plt.subplots` figure; never
    shows or saves, so a caller decides (`ax.figure.savefig(path)`).
    """
    x, y = _plot_columns(directions, x, y)
    ok = np.ones(len(df), dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    front = np.zeros(len(df), dtype=bool)
    if ok.any():
        front[ok] = pareto_mask(df[ok], {x: directions[x], y: directions[y]})
    units = getattr(df, "attrs", {}).get("units", {})
    (x_label, x_factor), (y_label, y_factor) = axis_label(x, units), axis_label(y, units)
    xs = np.asarray(df[x], dtype=float) * x_factor
    ys = np.asarray(df[y], dtype=float) * y_factor
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    label = "evaluated" if feasible is None else "feasible"
    ax.scatter(xs[ok], ys[ok], s=12, c="0.6", label=f"{label} ({int(ok.sum())})")
    if not ok.all():
        ax.scatter(xs[~ok], ys[~ok], s=14, c="0.75", marker="x",
                   label=f"violates constraints ({int((~ok).sum())})")
    order = np.argsort(xs[front], kind="stable")
    # A minimised x keeps each front point's y until the next point ("post"); a maximised x
    # reaches back to the previous point ("pre"): either way the steps bound the dominated region.
    ax.step(xs[front][order], ys[front][order], where="post" if directions[x] == "min" else "pre",
            marker="o", ms=5, color="C3", label=f"Pareto front ({int(front.sum())})")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return ax
