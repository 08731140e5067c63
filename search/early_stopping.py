"""Learning-curve early stopping for train-from-scratch evaluation (Baker et al. 2018).

Training an arch to the end costs `horizon` epochs, and most archs end up dominated. Baker et
al. ("Accelerating Neural Architecture Search using Performance Prediction") predict the final
accuracy from a partial learning curve with sequential regression models: one ν-SVR (RBF
kernel) per curve length t, on the arch's features, the curve so far and its first and second
differences. An arch stops when the probability that its final accuracy reaches what it needs
is below Δ, with the prediction error taken as Gaussian, its std the model's cross-validated
residual std.

What an arch "needs" is where this goes past the paper's single objective: its costs
(latency, MACs, params) are known before it trains, so it can only join the Pareto front by
beating the best accuracy among the front points that cost no more in every cost
(`needed_accuracy`). An arch cheaper than every front point needs nothing and always trains on.

Only complete curves train the regressors (a stopped arch has no final value), so the models
learn from the archs that were worth finishing, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm


def curve_features(features: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Rows of [arch features, y_1..y_t, first differences, second differences]."""
    prefixes = np.atleast_2d(np.asarray(prefixes, dtype=float))
    parts = [np.atleast_2d(np.asarray(features, dtype=float)), prefixes]
    if prefixes.shape[1] > 1:
        parts.append(np.diff(prefixes, n=1, axis=1))
    if prefixes.shape[1] > 2:
        parts.append(np.diff(prefixes, n=2, axis=1))
    return np.hstack(parts)


class CurveRegressor:
    """Sequential regression models f_t: (arch, y_1..y_t) -> y_horizon, for t < horizon.

    Each f_t learns the gain still to come, y_horizon - y_t, and adds it to y_t: late in a
    curve that gain is small, so an RBF model's smoothing costs little, where regressing
    y_horizon itself made f_9 worse than simply taking the last value."""

    def __init__(self, horizon: int, *, lengths: Sequence[int] | None = None, folds: int = 5) -> None:
        if horizon < 2:
            raise ValueError(f"a learning curve needs at least 2 epochs, got horizon={horizon}")
        self.horizon = horizon
        self.lengths = list(range(1, horizon)) if lengths is None else sorted(set(lengths))
        if not all(1 <= t < horizon for t in self.lengths):
            raise ValueError(f"curve lengths must be in 1..{horizon - 1}, got {self.lengths}")
        self.folds = folds
        self.models: dict[int, object] = {}
        self.residual_std: dict[int, float] = {}

    @staticmethod
    def _model():
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import NuSVR

        return make_pipeline(StandardScaler(), NuSVR(kernel="rbf", nu=0.5, C=1.0))

    def fit(self, features: np.ndarray, curves: np.ndarray) -> CurveRegressor:
        """Fit f_t for each t in `lengths` on complete `curves` (n x horizon) of archs with `features`."""
        from sklearn.model_selection import KFold, cross_val_predict

        curves = np.asarray(curves, dtype=float)
        if curves.ndim != 2 or curves.shape[1] != self.horizon:
            raise ValueError(f"curves must be n x {self.horizon}, got shape {curves.shape}")
        folds = KFold(n_splits=min(self.folds, len(curves)), shuffle=True, random_state=0)
        for t in self.lengths:
            X = curve_features(features, curves[:, :t])
            gain = curves[:, -1] - curves[:, t - 1]
            held_out = cross_val_predict(self._model(), X, gain, cv=folds)
            self.residual_std[t] = float(np.std(gain - held_out, ddof=1))
            self.models[t] = self._model().fit(X, gain)
        return self

    def predict(self, features: np.ndarray, prefixes: np.ndarray) -> tuple[np.ndarray, float]:
        """Predicted final values for curves of one length t, and f_t's residual std."""
        prefixes = np.atleast_2d(np.asarray(prefixes, dtype=float))
        t = prefixes.shape[1]
        if t not in self.models:
            raise ValueError(f"no model for curves of length {t} (fitted: {self.lengths})")
        X = curve_features(np.atleast_2d(features), prefixes)
        return prefixes[:, -1] + self.models[t].predict(X), self.residual_std[t]


def needed_accuracy(front_acc: np.ndarray, front_costs: np.ndarray, costs: np.ndarray) -> float:
    """The accuracy an arch with `costs` must beat to be non-dominated by the front.

    Front point j dominates the arch when it costs no more in every cost (all minimised) and
    is at least as accurate; so the arch needs more than the best such point's accuracy, and
    -inf when no front point is that cheap."""
    front_costs = np.atleast_2d(np.asarray(front_costs, dtype=float))
    if front_costs.size == 0:
        return -np.inf
    cheaper = (front_costs <= np.asarray(costs, dtype=float)).all(axis=1)
    return float(np.max(np.asarray(front_acc, dtype=float)[cheaper])) if cheaper.any() else -np.inf


@dataclass
class CurveStopper:
    """Decides, at the epochs `decide_at`, whether an arch's training goes on; learns from
    complete curves.

    `min_curves` complete curves are needed before anything is stopped; no arch stops before
    `min_epochs`; the models are refitted after every `refit_every` new complete curves.
    `decide_at` defaults to every epoch from `min_epochs` on for curves of up to 20 epochs, and
    to 10 evenly spaced epochs for longer ones (NAS-Bench-201's 200), since each decision
    epoch is one regression model to fit."""

    horizon: int
    min_epochs: int = 3
    min_curves: int = 10
    delta: float = 0.05
    refit_every: int = 5
    decide_at: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_epochs < self.horizon:
            raise ValueError(f"min_epochs must be in 1..{self.horizon - 1}, got {self.min_epochs}")
        if not self.decide_at:
            span = range(self.min_epochs, self.horizon)
            self.decide_at = (list(span) if len(span) <= 20 else
                              sorted({int(round(t)) for t in np.linspace(span[0], span[-1], 10)}))
        if not all(self.min_epochs <= t < self.horizon for t in self.decide_at):
            raise ValueError(f"decide_at epochs must be in {self.min_epochs}..{self.horizon - 1}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.min_curves < 2:
            raise ValueError(f"min_curves must be >= 2, got {self.min_curves}")
        self._features: list[np.ndarray] = []
        self._curves: list[np.ndarray] = []
        self._regressor: CurveRegressor | None = None
        self._fitted_on = 0

    def add_complete(self, features: np.ndarray, curve: np.ndarray) -> None:
        curve = np.asarray(curve, dtype=float)
        if curve.shape != (self.horizon,):
            raise ValueError(f"a complete curve has {self.horizon} epochs, got {curve.shape}")
        self._features.append(np.asarray(features, dtype=float))
        self._curves.append(curve)

    def _current(self) -> CurveRegressor | None:
        n = len(self._curves)
        if n < self.min_curves:
            return None
        if self._regressor is None or n - self._fitted_on >= self.refit_every:
            self._regressor = CurveRegressor(self.horizon, lengths=self.decide_at).fit(
                np.vstack(self._features), np.vstack(self._curves))
            self._fitted_on = n
        return self._regressor

    def probability_of_reaching(self, features: np.ndarray, prefix: np.ndarray, needed: float) -> float:
        """P(final accuracy > needed) under the Gaussian error model; 1.0 while nothing is fitted."""
        if not np.isfinite(needed):
            return 1.0
        regressor = self._current()
        if regressor is None:
            return 1.0
        mean, std = regressor.predict(features, np.asarray(prefix, dtype=float)[None, :])
        return float(norm.sf(needed, loc=float(mean[0]), scale=max(std, 1e-6)))

    def should_stop(self, features: np.ndarray, prefix: np.ndarray, needed: float) -> bool:
        """Stop after `len(prefix)` epochs (a decision epoch) when P(final > needed) < delta."""
        if len(prefix) not in self.decide_at:
            return False
        return self.probability_of_reaching(features, prefix, needed) < self.delta


@dataclass
class Replay:
    """What a train-from-scratch search spent per arch, in evaluation order."""

    order: np.ndarray  # arch indices, in the order they were trained
    epochs: np.ndarray  # epochs each spent
    complete: np.ndarray  # trained to the horizon (True) or stopped (False)

    def completed(self) -> np.ndarray:
        return self.order[self.complete]


class StoppingRun:
    """A train-from-scratch search's stopping state, one arch at a time: the front of the
    archs trained to the end so far (accuracy max, costs min) and the stopper that learns from
    their curves. `replay` is this over a whole order; the search runner feeds it each arch as
    the optimizer asks for it and, on resume, the logged archs again in their order: the
    decisions are a pure function of that order, so a resumed run decides as it would have.

    `eligible` (default all) marks the archs that may enter the front when complete (those
    meeting the search's constraints); every complete curve trains the stopper."""

    def __init__(self, curves: np.ndarray, features: np.ndarray, costs: np.ndarray,
                 stopper: CurveStopper | None, eligible: np.ndarray | None = None) -> None:
        self.curves = np.asarray(curves, dtype=float)
        self.costs = np.asarray(costs, dtype=float).reshape(len(self.curves), -1)
        self.features = features
        self.stopper = stopper
        self.eligible = (np.ones(len(self.curves), dtype=bool) if eligible is None
                         else np.asarray(eligible, dtype=bool))
        self.directions = ["max"] + ["min"] * self.costs.shape[1]
        self.horizon = self.curves.shape[1]
        self._done: list[int] = []
        self.front: np.ndarray = np.empty(0, dtype=int)

    def train(self, i: int) -> tuple[int, bool]:
        """Train arch `i` epoch by epoch along its curve: (epochs spent, trained to the end)."""
        from search.pareto import pareto_mask

        curves, costs, stopper = self.curves, self.costs, self.stopper
        needed = needed_accuracy(curves[self.front, -1], costs[self.front], costs[i])
        decide_at = stopper.decide_at if stopper is not None else []
        stopped_at = next((t for t in decide_at
                           if stopper.should_stop(self.features[i], curves[i, :t], needed)), None)
        if stopped_at is not None:
            return stopped_at, False
        if stopper is not None:
            stopper.add_complete(self.features[i], curves[i])
        if self.eligible[i]:
            self._done.append(i)
            points = np.column_stack([curves[self._done, -1], costs[self._done]])
            self.front = np.asarray(self._done)[pareto_mask(points, self.directions)]
        return self.horizon, True


def replay(curves: np.ndarray, features: np.ndarray, costs: np.ndarray, order: np.ndarray,
           stopper: CurveStopper | None) -> Replay:
    """Train the archs `order` names one after another, epoch by epoch along their recorded
    `curves` (n x horizon), stopping those `stopper` predicts cannot join the front of the
    archs completed so far (accuracy max, `costs` min). `stopper=None` trains all to the end."""
    run = StoppingRun(curves, features, costs, stopper)
    spent, complete = zip(*(run.train(i) for i in order), strict=True) if len(order) else ((), ())
    return Replay(np.asarray(order), np.asarray(spent, dtype=int), np.asarray(complete, dtype=bool))
