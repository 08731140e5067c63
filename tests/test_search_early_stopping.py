"""Learning-curve early stopping inside `nasbench search` (benchmark mode, the built-in table's
real curves): fewer epochs at equal archs, decisions equal to `search.early_stopping.replay`
over the run's arch order (the oracle), stopped archs kept off the front, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nasbench
from nasbench.errors import ConfigError, RunError
from nasbench.tabular.builtin import load_builtin
from search.early_stopping import CurveStopper, replay
from search.evaluations import log_path, read_table, write_table
from search.pareto import pareto_mask

STOPPING = {"min_epochs": 3, "delta": 0.2, "min_curves": 10, "refit_every": 5}
COLUMNS = ["arch_id", "top1", "latency_ms", "epochs_trained", "stopped_early"]


def config(root: Path, name: str, budget: int, optimizer: str = "random",
           stopping: dict | None = STOPPING) -> dict:
    cfg = {"benchmark": {"name": "builtin"}, "objectives": ["top1", "latency_ms"],
           "optimizer": {"name": optimizer, "settings": {"batch_size": 8} if optimizer == "random"
                         else {"pop_size": 12}},
           "budget": budget, "run": {"root": str(root), "name": name}}
    return {**cfg, "early_stopping": stopping} if stopping is not None else cfg


@pytest.fixture(scope="module")
def bench():
    bench = load_builtin()
    features = np.vstack([bench.space.features(bench.space.parse(a)) for a in bench.table["arch"]])
    return bench, bench.curves(), features, bench.table[["latency_ms"]].to_numpy(dtype=float)


def oracle(bench, df: pd.DataFrame, stopping: dict = STOPPING):
    """The bench's replay of the run's arch order with a fresh stopper of the same settings."""
    table, curves, features, costs = bench
    order = np.array([table.table.index.get_loc(a) for a in df["arch_id"]])
    stopper = CurveStopper(curves.shape[1], **stopping)
    return order, replay(curves, features, costs, order, stopper)


@pytest.mark.parametrize("optimizer", ["random", "nsga2"])
def test_search_decisions_equal_the_replay_of_its_arch_order(tmp_path, bench, optimizer):
    run = nasbench.search(config(tmp_path, "s", 60, optimizer), quiet=True)
    df = run.evaluations
    order, expected = oracle(bench, df)
    assert df["epochs_trained"].tolist() == expected.epochs.tolist()
    assert (~df["stopped_early"].to_numpy()).tolist() == expected.complete.tolist()
    assert df["stopped_early"].sum() > 0
    curves, table = bench[1], bench[0].table
    stopped = df["stopped_early"].to_numpy()
    # a stopped arch has the top1 its curve reached; a complete one the table's trained top1
    reached = curves[order, df["epochs_trained"].to_numpy() - 1]
    assert np.array_equal(df["top1"].to_numpy()[stopped], reached[stopped])
    assert np.array_equal(df["top1"].to_numpy()[~stopped], table["top1"].to_numpy()[order][~stopped])
    # the front is the completed archs' front: no stopped arch on it
    front, _ = read_table(run.path / "pareto.parquet")
    done = df[~stopped]
    truth = done[pareto_mask(done, {"top1": "max", "latency_ms": "min"})]
    assert sorted(front["arch_id"]) == sorted(truth["arch_id"])
    assert not run.evaluations.loc[stopped, "is_pareto"].any()


def test_stopping_spends_fewer_epochs_at_equal_archs(tmp_path):
    with_stop = nasbench.search(config(tmp_path, "on", 60), quiet=True)
    without = nasbench.search(config(tmp_path, "off", 60, stopping=None), quiet=True)
    on, off = with_stop.evaluations, without.evaluations
    assert on["arch_id"].tolist() == off["arch_id"].tolist()  # random order: the same 60 archs
    epochs = with_stop.manifest["epochs"]
    assert epochs["all_trained"] == 600 and epochs["spent"] == int(on["epochs_trained"].sum())
    assert epochs["spent"] < 600 and epochs["stopped"] == int(on["stopped_early"].sum()) > 0
    assert "epochs" not in without.manifest and "stopped_early" not in off.columns


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a[COLUMNS].reset_index(drop=True),
                                  b[COLUMNS].reset_index(drop=True))


def test_a_grown_run_equals_the_uninterrupted_one(tmp_path):
    straight = nasbench.search(config(tmp_path, "straight", 60), quiet=True)
    nasbench.search(config(tmp_path, "grown", 25), quiet=True)
    grown = nasbench.search(config(tmp_path, "grown", 60), resume=True, quiet=True)
    _compare(grown.evaluations, straight.evaluations)
    assert grown.manifest["epochs"] == straight.manifest["epochs"]


def test_a_killed_run_resumes_exactly_from_its_snapshot_and_journal(tmp_path):
    """A kill is staged from a finished run: the Parquet snapshot keeps 20 rows, the journal
    33, the manifest says failed; the resume re-decides those 33 and measures the rest."""
    straight = nasbench.search(config(tmp_path, "straight", 60), quiet=True)
    killed = nasbench.search(config(tmp_path, "killed", 60), quiet=True)
    table = killed.path / "evaluations.parquet"
    rows, meta = read_table(table)
    write_table(table, rows.head(20), meta)
    journal = log_path(table)
    journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:33]))
    manifest = killed.path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "failed"}))
    assert len(read_table(table)[0]) == 33
    resumed = nasbench.search(config(tmp_path, "killed", 60), resume=True, quiet=True)
    _compare(resumed.evaluations, straight.evaluations)
    assert resumed.manifest["epochs"] == straight.manifest["epochs"]


def test_a_log_the_stopper_decides_differently_is_refused_on_resume(tmp_path):
    run = nasbench.search(config(tmp_path, "t", 30), quiet=True)
    table = run.path / "evaluations.parquet"
    rows, meta = read_table(table)
    stopped = rows.index[rows["stopped_early"]][0]
    rows.loc[stopped, "epochs_trained"] += 1
    write_table(table, rows, meta)
    log_path(table).unlink()
    manifest = (run.path / "manifest.json").read_bytes()
    with pytest.raises(RunError, match="early stopping now decides"):
        nasbench.search(config(tmp_path, "t", 40), resume=True, quiet=True)
    assert (run.path / "manifest.json").read_bytes() == manifest  # refused before reopening


def test_a_stopped_arch_is_never_feasible_so_never_on_a_front():
    """Its top1 is a partial run's: even when it would dominate, it is off the front."""
    from search import feasible_mask
    from search.evaluations import with_pareto

    df = pd.DataFrame({"top1": [0.99, 0.5, 0.7], "latency_ms": [1.0, 2.0, 3.0],
                       "stopped_early": [True, False, False]})
    assert feasible_mask(df, []).tolist() == [False, True, True]
    front = with_pareto(df, {"top1": "max", "latency_ms": "min"}, feasible_mask(df, []))
    assert front["is_pareto"].tolist() == [False, True, True]


def test_resuming_with_other_stopping_settings_is_refused(tmp_path):
    nasbench.search(config(tmp_path, "t", 20), quiet=True)
    with pytest.raises(ConfigError, match="early_stopping"):
        nasbench.search(config(tmp_path, "t", 30, stopping={**STOPPING, "delta": 0.1}),
                        resume=True, quiet=True)


def test_only_archs_meeting_the_constraints_enter_the_stopping_front(bench):
    """An infeasible arch trained to the end teaches the stopper but never raises the bar."""
    from search.early_stopping import StoppingRun

    _, curves, features, costs = bench
    for eligible, front in (([False] * len(curves), []), ([True] * len(curves), [0])):
        run = StoppingRun(curves, features, costs, CurveStopper(10, min_epochs=3),
                          eligible=np.array(eligible))
        assert run.train(0) == (10, True)
        assert run.front.tolist() == front and len(run.stopper._curves) == 1


def test_a_search_stops_early_on_nasbench201_curves(tmp_path, monkeypatch):
    """benchmark nb201-*: the user's file (an API stand-in here) tabulated with its curves."""
    import nasbench.tabular.published as published
    from tests.test_tabular_published import _every_arch_bench

    opened = []
    monkeypatch.setattr(published, "open_nasbench201",
                        lambda path, dataset: opened.append((str(path), dataset)) or _every_arch_bench())
    cfg = {**config(tmp_path, "nb", 30, stopping={**STOPPING, "min_epochs": 2}),
           "benchmark": {"name": "nb201-cifar100", "nb201": "/data/NAS-Bench-201.pth"}}
    df = nasbench.search(cfg, quiet=True).evaluations
    assert opened == [("/data/NAS-Bench-201.pth", "cifar100")]
    assert len(df) == 30 and set(df["epochs_trained"]) <= {2, 3, 4, 5}
    assert df["stopped_early"].sum() == (df["epochs_trained"] < 5).sum() > 0


def test_a_benchmark_run_has_no_weights_to_export(tmp_path):
    from nasbench.errors import UserError

    run = nasbench.search(config(tmp_path, "x", 12), quiet=True)
    with pytest.raises(UserError, match="tabular benchmark builtin: its archs have no weights"):
        nasbench.export(run, quiet=True)
