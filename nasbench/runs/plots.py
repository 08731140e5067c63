"""Plots of a run's metrics.csv: the validation-accuracy curve of a train or prune run."""

from __future__ import annotations

from typing import Any

import pandas as pd

from nasbench_core.errors import RunError

X_COLUMNS = ("epoch", "stage", "step")  # train runs log epochs, prune runs stages


def accuracy_columns(metrics: pd.DataFrame) -> list[str]:
    """`val_acc` (prune) and `val_acc_<role>` (train: smallest, largest, ...) columns."""
    return [c for c in metrics.columns if str(c).startswith("val_acc")]


def plot_metrics(metrics: pd.DataFrame, ax: Any = None, *, title: str | None = None) -> Any:
    """Validation accuracy (stored as fractions, shown in %) per epoch or stage, one line per
    accuracy column; returns the Axes and never shows or saves."""
    columns = accuracy_columns(metrics)
    if not columns:
        raise RunError(f"metrics.csv has no val_acc column to plot; columns: {', '.join(map(str, metrics.columns))}")
    x = next((c for c in X_COLUMNS if c in metrics.columns), None)
    xs = metrics[x].astype(str) if x == "stage" else (metrics.index if x is None else metrics[x])
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    for column in columns:
        ax.plot(xs, 100.0 * metrics[column].astype(float), marker="o", ms=3, label=column)
    ax.set_xlabel(x or "row")
    ax.set_ylabel("val accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return ax
