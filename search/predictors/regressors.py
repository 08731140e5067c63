"""scikit-learn regressors for arch -> value predictors, and their K-fold selection.

Every candidate sees standardised inputs and a standardised target (log-transformed first
for latency, so the loss is relative error), which lets one small grid per model fit any
target scale. Hyperparameters are plain JSON values so a choice can be saved and refitted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

from nasbench_core.errors import UserError


@dataclass(frozen=True)
class Candidate:
    name: str
    build: Callable[[dict[str, Any], int], Any]
    grid: dict[str, list[Any]]


def _mlp(params: dict[str, Any], seed: int) -> MLPRegressor:
    p = dict(params)
    if "hidden_layer_sizes" in p:
        p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
    return MLPRegressor(solver="lbfgs", max_iter=2000, random_state=seed, **p)


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in [
        Candidate("ridge", lambda p, s: Ridge(**p), {"alpha": [0.01, 0.1, 1.0, 10.0]}),
        Candidate("svr", lambda p, s: SVR(kernel="rbf", **p),
                  {"C": [1.0, 10.0, 100.0], "epsilon": [0.01, 0.1], "gamma": ["scale"]}),
        Candidate("gbr", lambda p, s: GradientBoostingRegressor(random_state=s, **p),
                  {"n_estimators": [200], "max_depth": [3], "learning_rate": [0.05, 0.1]}),
        Candidate("mlp", _mlp, {"hidden_layer_sizes": [[64, 64], [128]], "alpha": [1e-3, 1e-1]}),
    ]
}


def list_regressors() -> list[str]:
    return list(CANDIDATES)


def make_regressor(name: str, params: dict[str, Any], *, seed: int = 0, log_target: bool = False):
    """An unfitted estimator: scaled inputs -> model, on a (log-)standardised target."""
    if name not in CANDIDATES:
        raise UserError(f"unknown regressor {name!r}; known: {list_regressors()}")
    steps = [FunctionTransformer(np.log, np.exp, check_inverse=False)] if log_target else []
    return TransformedTargetRegressor(
        regressor=make_pipeline(StandardScaler(), CANDIDATES[name].build(params, seed)),
        transformer=Pipeline([*(("log", s) for s in steps), ("scale", StandardScaler())]),
    )


@dataclass(frozen=True)
class Selection:
    """The regressor K-fold CV chose, and every candidate's best CV score (higher is better)."""

    name: str
    params: dict[str, Any]
    cv_score: float
    scores: pd.DataFrame


def fit_quietly(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """Fit on one BLAS thread: as fast for these small problems, and bit-reproducible."""
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def select_regressor(
    X: np.ndarray,
    y: np.ndarray,
    *,
    candidates: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    log_target: bool = False,
) -> Selection:
    """Grid-search each candidate by K-fold CV; score MAPE on a log target, else RMSE."""
    names = list(candidates or list_regressors())
    for name in names:
        if name not in CANDIDATES:
            raise UserError(f"unknown regressor {name!r}; known: {list_regressors()}")
    folds = min(folds, len(y))
    if folds < 2:
        raise UserError(f"need at least 2 measured archs to fit a predictor, got {len(y)}")
    scoring = "neg_mean_absolute_percentage_error" if log_target else "neg_root_mean_squared_error"
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    rows = []
    for name in names:
        grid = {f"regressor__{name_step(name)}__{k}": v for k, v in CANDIDATES[name].grid.items()}
        search = GridSearchCV(
            make_regressor(name, {}, seed=seed, log_target=log_target), grid,
            scoring=scoring, cv=splitter, n_jobs=1, refit=False,
        )
        fit_quietly(search, X, y)
        best = {k.rsplit("__", 1)[1]: v for k, v in search.best_params_.items()}
        rows.append({"name": name, "params": best, "cv_score": float(search.best_score_)})
    scores = pd.DataFrame(rows).sort_values("cv_score", ascending=False, ignore_index=True)
    top = scores.iloc[0]
    return Selection(str(top["name"]), dict(top["params"]), float(top["cv_score"]), scores)


def name_step(name: str) -> str:
    """The pipeline step name make_pipeline gives the model of candidate `name`."""
    model = CANDIDATES[name].build({}, 0)
    return type(model).__name__.lower()
