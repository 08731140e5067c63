"""search.warm_start: earlier runs' evaluations seed a new search and are never re-measured."""

from __future__ import annotations

import pytest

import nasbench
from nasbench.errors import UserError
from search.evaluations import log_path, read_log
from tests.test_api import tiny_search


def _config(root, name, **changes):
    cfg = tiny_search(root, name, ["top1", "params"])
    return {**cfg, "optimizer": {"name": "nsga2", "settings": {"pop_size": 4}}, **changes}


def test_a_warm_started_search_imports_the_rows_and_measures_only_new_archs(tmp_path):
    first = nasbench.search(_config(tmp_path, "a"), budget=6, quiet=True)
    earlier = first.evaluations
    second = nasbench.search(_config(tmp_path, "b", warm_start=[str(first.path)]), budget=4, quiet=True)
    table = second.evaluations
    imported = table[table["source"] == "imported"]
    own = table[table["source"] != "imported"]
    assert imported["arch_id"].tolist() == earlier["arch_id"].tolist()
    for column in ["top1", "params", "timestamp"]:  # values carried over, not re-measured
        assert imported[column].tolist() == earlier[column].tolist(), column
    assert len(own) == 4 and not set(own["arch_id"]) & set(earlier["arch_id"])
    journal = log_path(second.path / "evaluations.parquet")
    assert len(journal.read_text().splitlines()) == 4  # only its own evaluations were measured
    assert set(read_log(journal)["arch_id"]) == set(own["arch_id"])
    assert second.manifest["evaluations"] == 4 and second.manifest["imported"] == 6

    grown = nasbench.search(second.config, resume=True, budget="+2", quiet=True)
    assert grown.manifest["evaluations"] == 6 and grown.manifest["imported"] == 6  # no re-import


def test_warm_start_from_a_run_that_measured_other_values_is_refused_before_any_run_dir(tmp_path, cli):
    other_seed = nasbench.search(_config(tmp_path, "s", run={"root": str(tmp_path), "name": "s", "seed": 1}),
                                 budget=2, quiet=True)
    with pytest.raises(UserError, match=r"measured accuracy on calibration subset .* not "):
        nasbench.search(_config(tmp_path, "x", warm_start=[str(other_seed.path)]), budget=2, quiet=True)
    only_params = nasbench.search({**_config(tmp_path, "p"), "objectives": ["params"]}, budget=2,
                                  quiet=True)
    result = cli("search", "--set", f"warm_start=[{only_params.path}]", "--set", f"run.root={tmp_path}",
                 "--set", "run.name=y", "--set", "data.name=digits", "--set", "data.resolution=16",
                 "--set", "data.channels=1", "--set", "data.limit=200", "--set", "supernet.family=mbv3",
                 "--set", "evaluation.bn_batches=1", "--set", "evaluation.val_batches=1",
                 "--set", "objectives=[top1,params]", "--set", "budget=2")
    assert result.code == 2
    assert result.err.strip() == f"nasbench: error: search.warm_start: {only_params.path} did not measure top1"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_zero_cost_warm_start_runs_through_the_runner(tmp_path):
    """The runner hands the optimizer a proxy scorer: the pool's proxy top is measured first."""
    cfg = tiny_search(tmp_path, "zc", ["params", "zc_synflow"])
    cfg["optimizer"] = {"name": "random", "settings": {
        "batch_size": 2, "zc_warm_start": {"proxy": "synflow", "pool": 12, "top": 3}}}
    table = nasbench.search(cfg, budget=5, quiet=True).evaluations
    first = table["zc_synflow"].iloc[:3].tolist()
    assert first == sorted(first, reverse=True)  # measured best-first by the proxy
