"""Learning-curve early stopping: the regressors, the front rule, the stopper, and a replay
on the built-in table's real curves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.early_stopping import (
    CurveRegressor,
    CurveStopper,
    curve_features,
    needed_accuracy,
    replay,
)


def synthetic_curves(n: int, horizon: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Saturating curves y_t = a (1 - exp(-t / r)) + noise. The rate r comes from the arch's
    second feature; the asymptote a partly from its first and partly from the training run
    (hidden), so the features tell some of the final value and a longer curve tells more."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(n, 2))
    a = 0.5 + 0.25 * features[:, 0] + 0.2 * rng.uniform(0, 1, size=n)
    r = 1.0 + 4.0 * features[:, 1]
    t = np.arange(1, horizon + 1)
    curves = a[:, None] * (1 - np.exp(-t[None, :] / r[:, None]))
    return features, curves + rng.normal(0, 0.003, size=curves.shape)


def test_curve_features_are_arch_then_curve_then_differences():
    got = curve_features(np.array([7.0, 8.0]), np.array([0.1, 0.3, 0.6]))
    assert np.allclose(got, [[7, 8, 0.1, 0.3, 0.6, 0.2, 0.3, 0.1]])
    assert np.allclose(curve_features(np.array([1.0]), np.array([0.5])), [[1, 0.5]])


def test_the_regressors_predict_the_final_value_better_than_the_last_seen_value():
    features, curves = synthetic_curves(120, 10, seed=0)
    model = CurveRegressor(10).fit(features[:80], curves[:80])
    for t in (3, 5, 8):
        mean, std = model.predict(features[80:], curves[80:, :t])
        truth = curves[80:, -1]
        error = np.abs(mean - truth).mean()
        assert error < 0.5 * np.abs(curves[80:, t - 1] - truth).mean(), t
        assert 0.3 * error < std < 3 * error, (t, std, error)  # the CV std is the held-out error
    assert model.residual_std[8] < model.residual_std[2]  # a longer curve tells more


def test_both_the_arch_and_the_partial_curve_inform_the_prediction(monkeypatch):
    """Ablations at t=3: the full model beats one without the arch features (zeros) and one
    without the curve (curve_features keeping the features only) by a wide margin."""
    import search.early_stopping as early_stopping

    features, curves = synthetic_curves(120, 10, seed=0)

    def error(train_features, test_features) -> float:
        model = CurveRegressor(10).fit(train_features, curves[:80])
        mean, _ = model.predict(test_features, curves[80:, :3])
        return float(np.abs(mean - curves[80:, -1]).mean())

    full = error(features[:80], features[80:])
    no_arch = error(np.zeros((80, 2)), np.zeros((40, 2)))
    monkeypatch.setattr(early_stopping, "curve_features",
                        lambda f, p: np.broadcast_to(np.atleast_2d(f), (len(np.atleast_2d(p)), 2)))
    no_curve = error(features[:80], features[80:])
    assert full < 0.6 * no_arch and full < 0.6 * no_curve, (full, no_arch, no_curve)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 8), k=st.integers(1, 3))
def test_needed_accuracy_is_the_dominance_threshold(seed, n, k):
    """Brute force: with accuracy just above `needed` no front point dominates the arch; just
    below, one does (or nothing can, when needed is -inf)."""
    rng = np.random.default_rng(seed)
    acc, costs, mine = rng.uniform(size=n), rng.uniform(size=(n, k)), rng.uniform(size=k)

    def dominated(a: float) -> bool:
        return any((costs[j] <= mine).all() and acc[j] >= a for j in range(n))

    needed = needed_accuracy(acc, costs.reshape(n, k), mine)
    assert not dominated(needed + 1e-9)
    if np.isfinite(needed):
        assert dominated(needed - 1e-9)
    else:
        assert not dominated(-1e9)


def _stopper_with_history(**kwargs) -> CurveStopper:
    features, curves = synthetic_curves(40, 10, seed=1)
    stopper = CurveStopper(horizon=10, **kwargs)
    for f, c in zip(features, curves, strict=True):
        stopper.add_complete(f, c)
    return stopper


def test_the_stopper_stops_a_hopeless_arch_and_keeps_a_promising_one():
    stopper = _stopper_with_history(min_epochs=3)
    features, curves = synthetic_curves(2, 10, seed=2)
    poor, good = np.array([0.0, 0.9]), np.array([1.0, 0.0])
    slow = 0.5 * (1 - np.exp(-np.arange(1, 11) / 4.6))  # asymptote 0.5
    fast = 0.95 * (1 - np.exp(-np.arange(1, 11) / 1.0))  # asymptote 0.95
    assert stopper.should_stop(poor, slow[:4], needed=0.9)
    assert not stopper.should_stop(good, fast[:4], needed=0.9)
    assert not stopper.should_stop(poor, slow[:4], needed=-np.inf)  # nothing dominates it
    assert not stopper.should_stop(poor, slow[:2], needed=0.9)  # before min_epochs
    assert not stopper.should_stop(poor, slow[:10], needed=0.9)  # the curve is complete


def test_nothing_stops_before_enough_curves_were_seen():
    stopper = CurveStopper(horizon=10, min_curves=10)
    features, curves = synthetic_curves(9, 10, seed=3)
    for f, c in zip(features, curves, strict=True):
        stopper.add_complete(f, c)
    assert not stopper.should_stop(np.zeros(2), np.zeros(5), needed=0.99)
    stopper.add_complete(features[0], curves[0])
    assert stopper.should_stop(np.zeros(2), np.zeros(5), needed=0.99)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_epochs": 0}, "min_epochs"), ({"min_epochs": 10}, "min_epochs"),
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"min_curves": 1}, "min_curves"),
])
def test_bad_stopper_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurveStopper(horizon=10, **kwargs)


def test_replay_without_a_stopper_trains_everything_to_the_end():
    features, curves = synthetic_curves(12, 6, seed=4)
    out = replay(curves, features, features[:, :1], np.arange(12), None)
    assert out.complete.all() and (out.epochs == 6).all()


def test_long_curves_are_decided_at_ten_epochs_and_stops_happen_only_there():
    stopper = CurveStopper(horizon=200, min_epochs=5)
    assert len(stopper.decide_at) == 10 and stopper.decide_at[0] == 5 and stopper.decide_at[-1] == 199
    assert CurveStopper(horizon=10, min_epochs=3).decide_at == list(range(3, 10))
    features, curves = synthetic_curves(60, 40, seed=5)
    stopper = CurveStopper(horizon=40, min_epochs=4, min_curves=10, delta=0.2, decide_at=[4, 10, 20])
    out = replay(curves, features, features[:, :1], np.arange(60), stopper)
    assert (~out.complete).any()
    assert set(out.epochs[~out.complete]) <= {4, 10, 20} and (out.epochs[out.complete] == 40).all()
    assert not stopper.should_stop(np.zeros(2), np.zeros(7), needed=0.99)  # not a decision epoch
    with pytest.raises(ValueError, match="decide_at"):
        CurveStopper(horizon=40, min_epochs=4, decide_at=[2])


def test_the_builtin_tables_curves_are_its_own_training_runs():
    """`generate --add-curves` retrained every arch; each curve ends at the stored top1 and
    moves in steps of one validation image."""
    from nasbench.tabular.builtin import load_builtin

    table = load_builtin().table
    curves = np.vstack(table["top1_curve"].to_numpy())
    assert curves.shape == (216, 10)
    assert np.allclose(curves[:, -1], table["top1"].to_numpy(), atol=1e-9, rtol=0)
    images = curves * 359  # digits' seeded validation split
    assert np.allclose(images, np.round(images), atol=1e-6)
