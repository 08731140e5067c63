"""Held-out metrics for predictors, in the terms latency-predictor papers report.

RMSE and MAPE measure error; `acc10` is nn-Meter's "±10% accuracy" (share of predictions
within 10% of the truth); Kendall's tau measures how well the predictor *ranks* archs,
which is what a search needs. A proxy (e.g. MACs) gets a tau too, for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau


def kendall_tau(y_true: Sequence[float], y_score: Sequence[float]) -> float:
    """Kendall's tau-b between truth and a prediction or proxy (NaN when undefined)."""
    tau = kendalltau(np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)).statistic
    return float(tau)


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """rmse, mape (%), acc10 (fraction within ±10%), kendall_tau, n."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"need equal, non-empty shapes; got {t.shape} and {p.shape}")
    rel = np.abs(p - t) / np.abs(t)
    return {
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "mape": float(100.0 * np.mean(rel)),
        "acc10": float(np.mean(rel <= 0.10 + 1e-9)),  # tolerance: 1.1 vs 1.0 counts as 10%
        "kendall_tau": kendall_tau(t, p),
        "n": int(t.size),
    }
