"""Latency objectives on labelled devices: `latency_ms@cpu`, `@cuda:N`, `@node:LABEL`."""

from __future__ import annotations

import pytest

import nasbench
from nasbench.errors import ConfigError, UserError
from search.evaluations import read_metadata
from search.placement import Placement, split
from search.problem import parse_constraint
from tests.test_api import tiny_search

FAST_LATENCY = {"repeats": 4, "warmup": 1, "threads": 1}


def test_names_split_into_the_kind_and_where_it_is_measured():
    assert split("latency_ms") == ("latency_ms", None)
    assert split("latency_ms@cpu") == ("latency_ms", Placement("cpu"))
    assert split("latency_ms_pred@cuda:1") == ("latency_ms_pred", Placement("cuda:1"))
    assert split("latency_ms@node:edge-arm") == ("latency_ms", Placement("cpu", "edge-arm"))
    with pytest.raises(UserError, match=r"^objective 'top1@cpu': only latency_ms, latency_ms_pred take @DEVICE$"):
        split("top1@cpu")
    with pytest.raises(UserError, match=r"device 'gpu' is unknown; expected cpu, cuda, cuda:N or node:LABEL"):
        split("latency_ms@gpu")
    with pytest.raises(UserError, match=r"'CPU' is not a custom Ray resource name"):
        split("latency_ms@node:CPU")
    c = parse_constraint("latency_ms@node:edge-arm <= 5", ["latency_ms", "top1"])
    assert (c.column, c.op, c.value) == ("latency_ms@node:edge-arm", "<=", 5.0)


def test_one_search_carries_two_latency_columns_each_with_its_device_key(tmp_path):
    cfg = tiny_search(tmp_path, "two", ["params", "latency_ms@cpu"])
    cfg.update(budget=3, latency=FAST_LATENCY, constraints=["latency_ms <= 1e9"])
    run = nasbench.search(cfg, quiet=True)
    table = run.evaluations
    assert {"latency_ms", "latency_ms@cpu"} <= set(table.columns)
    assert table["latency_ms@cpu"].notna().all() and table["latency_ms"].notna().all()
    for column in ("latency_ms", "latency_ms@cpu"):  # each timing's spread and re-timing kept
        assert (table[f"{column}_iqr"] >= 0).all() and (table[f"{column}_iqr"] < table[column]).all()
        assert set(table[f"{column}_noisy"]) <= {0.0, 1.0} and table[f"{column}_retimed"].notna().all()
    device = read_metadata(run.path / "evaluations.parquet")["device"]
    parts = dict(p.split("=", 1) for p in device.split(";"))
    assert sorted(parts) == ["latency_ms", "latency_ms@cpu"]
    assert parts["latency_ms"] == parts["latency_ms@cpu"]  # both measured on this CPU
    import json

    state = json.loads(read_metadata(run.path / "evaluations.parquet")["machine_state"])
    assert set(state) >= {"loadavg_1m", "cpu_freq_mhz"} and state["cpu_count"] >= 1
    assert set(run.manifest["machine_state"]) == {"start", "end"}


def test_a_plain_latency_column_keeps_the_plain_device_key(tmp_path):
    cfg = tiny_search(tmp_path, "plain", ["params", "latency_ms"])
    run = nasbench.search({**cfg, "budget": 2, "latency": FAST_LATENCY}, quiet=True)
    device = read_metadata(run.path / "evaluations.parquet")["device"]
    assert "=" not in device.split("|")[0] and device.endswith("threads=1")  # older tables still resume


@pytest.mark.parametrize(("objective", "message"), [
    ("latency_ms@node:edge", "objective latency_ms@node:edge is measured on Ray nodes with resource "
                             "'edge': set runner=ray"),
    ("latency_ms@cuda:0", "latency device 'cuda:0' requested but torch sees no CUDA device"),
])
def test_a_device_this_search_cannot_reach_is_one_line_before_any_run_dir(tmp_path, cli, objective, message):
    import torch

    if objective.endswith("cuda:0") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("search", "--set", f"run.root={tmp_path}", "--set", "run.name=x",
                 "--set", f"objectives=[params,{objective}]", "--set", "budget=1")
    assert result.code == 2 and result.err.strip() == f"nasbench: error: {message}"
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        nasbench.search(tiny_search(tmp_path, "y", ["params", objective]), budget=1, quiet=True)


@pytest.mark.gpu
def test_a_gpu_latency_column_is_measured_on_that_gpu_while_top1_runs_on_cpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = tiny_search(tmp_path, "gpu", ["top1", "latency_ms@cuda:0", "latency_ms@cpu"])
    run = nasbench.search({**cfg, "budget": 2, "latency": {"repeats": 4, "warmup": 1}}, quiet=True)
    parts = dict(p.split("=", 1) for p in read_metadata(run.path / "evaluations.parquet")["device"].split(";"))
    assert parts["latency_ms@cuda:0"].split("|")[0] == torch.cuda.get_device_name(0)
    assert parts["latency_ms@cpu"] != parts["latency_ms@cuda:0"]
