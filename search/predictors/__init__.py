"""Arch -> value predictors (accuracy, latency) on search-space encodings, chosen by K-fold CV."""

from search.predictors.accuracy import AccuracyPredictor
from search.predictors.base import ArchPredictor, PredictorError
from search.predictors.metrics import kendall_tau, regression_metrics
from search.predictors.regressors import (
    Selection,
    list_regressors,
    make_regressor,
    select_regressor,
)

__all__ = [
    "AccuracyPredictor",
    "ArchPredictor",
    "PredictorError",
    "Selection",
    "kendall_tau",
    "list_regressors",
    "make_regressor",
    "regression_metrics",
    "select_regressor",
]
