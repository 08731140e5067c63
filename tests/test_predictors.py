"""Arch predictors: metrics, CV selection, save/load by refit (never unpickle), bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from search.latency import LatencyPredictor
from search.predictors import (
    AccuracyPredictor,
    ArchPredictor,
    PredictorError,
    kendall_tau,
    regression_metrics,
    select_regressor,
)
from supernets.space import SearchSpace

SPACE = SearchSpace({"depth": [1, 2, 3], "width": [8, 16, 24, 32], "kernel": [3, 5, 7]})
DEVICE = "cpu:Test CPU|torch-eager|batch=1|threads=1"


def _table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        arch = SPACE.sample(rng)
        macs = arch["depth"] * arch["width"] ** 2 * arch["kernel"] ** 2
        rows.append({
            "arch_id": SPACE.arch_id(arch), "arch": SPACE.canonical_json(arch),
            "latency_ms": 0.2 + macs / 5e4 * (1 + 0.02 * rng.standard_normal()),
            "top1": 0.5 + 0.1 * arch["depth"] + 0.002 * arch["width"],
            "macs": macs, "device": DEVICE,
        })
    return pd.DataFrame(rows)


def test_metrics_on_a_known_example():
    m = regression_metrics([1.0, 2.0, 4.0, 8.0], [1.1, 1.8, 4.0, 10.0])
    assert m["rmse"] == pytest.approx(np.sqrt((0.01 + 0.04 + 0 + 4.0) / 4))
    assert m["mape"] == pytest.approx(100 * (0.1 + 0.1 + 0 + 0.25) / 4)
    assert m["acc10"] == pytest.approx(0.75)  # 0.1, 0.1, 0 are within ±10%; 0.25 is not
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["n"] == 4
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_selection_prefers_the_model_that_fits():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(60, 3))
    y = X @ np.array([1.0, 2.0, -1.0]) + 3.0
    sel = select_regressor(X, y, candidates=["ridge", "svr"], folds=3)
    assert sel.name == "ridge"
    assert list(sel.scores["name"]) == ["ridge", "svr"]
    assert sel.scores["cv_score"].is_monotonic_decreasing


def test_unknown_regressor_is_a_user_error():
    with pytest.raises(PredictorError.__mro__[1], match="unknown regressor 'xgb'"):
        select_regressor(np.zeros((4, 1)), np.ones(4), candidates=["xgb"])


@pytest.mark.parametrize("candidate", ["ridge", "svr", "gbr", "mlp"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, candidate):
    table = _table()
    pred = LatencyPredictor(SPACE, candidates=[candidate], folds=3, use_macs=True).fit(table)
    path = pred.save(tmp_path / "lat")
    loaded = LatencyPredictor.load(path, SPACE, device=DEVICE)
    assert loaded.selection.name == candidate
    archs = [SPACE.sample(i) for i in range(10)]
    macs = [a["depth"] * a["width"] ** 2 * a["kernel"] ** 2 for a in archs]
    np.testing.assert_array_equal(pred.predict(archs, macs), loaded.predict(archs, macs))


def test_load_refits_and_never_unpickles(tmp_path, monkeypatch):
    pred = AccuracyPredictor(SPACE, candidates=["ridge"], folds=3).fit(_table())
    path = pred.save(tmp_path / "acc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.json", "acc.parquet"]
    meta = json.loads(path.read_text())
    assert meta["model"]["name"] == "ridge" and meta["kind"] == "accuracy"

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = AccuracyPredictor.load(path, SPACE)
    archs = [SPACE.sample(i) for i in range(5)]
    np.testing.assert_array_equal(pred.predict(archs), loaded.predict(archs))


def test_wrong_device_or_space_or_kind_is_refused(tmp_path):
    path = LatencyPredictor(SPACE, candidates=["ridge"], folds=3).fit(_table()).save(tmp_path / "p")
    with pytest.raises(PredictorError, match="fitted for device 'cpu:Test CPU.*not 'cuda:X'"):
        LatencyPredictor.load(path, SPACE, device="cuda:X")
    other = SearchSpace({"depth": [1, 2], "width": [8, 16, 24, 32], "kernel": [3, 5, 7]})
    with pytest.raises(PredictorError, match="fitted for search space"):
        LatencyPredictor.load(path, other)
    with pytest.raises(PredictorError, match="holds a latency predictor, not accuracy"):
        AccuracyPredictor.load(path)
    with pytest.raises(PredictorError, match="does not exist"):
        LatencyPredictor.load(tmp_path / "missing")


def test_latency_fit_refuses_mixed_or_other_devices():
    table = _table()
    mixed = table.assign(device=[DEVICE, "cpu:Other|torch-eager|batch=1|threads=1"] * 20)
    with pytest.raises(PredictorError, match="mixes devices"):
        LatencyPredictor(SPACE, candidates=["ridge"]).fit(mixed)
    pred = LatencyPredictor(SPACE, candidates=["ridge"], folds=3).fit(table)
    with pytest.raises(PredictorError, match="measured on 'cpu:Other"):
        pred.evaluate(mixed)


def test_evaluate_reports_macs_proxy_tau_and_fits_a_clean_target():
    train, held = _table(60, seed=0), _table(30, seed=1)
    pred = LatencyPredictor(SPACE, candidates=["ridge", "svr"], folds=3, use_macs=True).fit(train)
    m = pred.evaluate(held)
    assert set(m) == {"rmse", "mape", "acc10", "kendall_tau", "n", "macs_kendall_tau"}
    assert m["kendall_tau"] > 0.8
    assert m["mape"] < 10


def test_predictor_errors_name_the_problem():
    pred = ArchPredictor(SPACE, "top1", use_macs=True)
    with pytest.raises(PredictorError, match="not fitted"):
        pred.predict([SPACE.smallest()])
    with pytest.raises(PredictorError, match=r"lacks column\(s\) \['macs'\]"):
        pred.fit(_table().drop(columns="macs"))
