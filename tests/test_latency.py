"""Latency measurement, stratified sampling, latency tables and the per-block lookup table.

Timings are never asserted: only that numbers are positive and finite, columns are right,
settings are validated and restored, and the bookkeeping (keys, constants, files) is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nasbench_core.errors import ConfigError
from search.latency import (
    COLUMNS,
    LatencyLUT,
    LatencySettings,
    decompose,
    measure_archs,
    measure_latency,
    measure_latency_table,
    stratified_indices,
    stratified_sample,
    tilted_pool,
)
from search.predictors import PredictorError
from supernets.space import SearchSpace

FAST = {"warmup": 1, "repeats": 3, "threads": 1}


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


class TinyElastic(nn.Module):
    """Stand-in supernet: elastic width and depth, a resolution, `extract` to stock layers."""

    def __init__(self):
        super().__init__()
        self.space = SearchSpace({"resolution": [8, 12, 16], "width": [4, 8, 16], "depth": [1, 2, 3]})

    def build_config(self):
        return {"name": "tiny-elastic", "in_chans": 3}

    def extract(self, arch):
        arch = self.space.validate(arch)
        w = arch["width"]
        layers = [nn.Conv2d(3, w, 3, padding=1), nn.ReLU()]
        for _ in range(arch["depth"]):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_measure_latency_gives_positive_median_and_iqr(backend):
    result = measure_latency(_model(), (3, 16, 16), LatencySettings(backend=backend, **FAST))
    assert result.median_ms > 0 and math.isfinite(result.median_ms)
    assert result.iqr_ms >= 0 and len(result.samples_ms) == 3


def test_cpu_clock_and_threads_are_restored():
    before = torch.get_num_threads()
    settings = LatencySettings(clock="cpu", batch=2, **FAST)
    assert measure_latency(_model(), (3, 8, 8), settings).median_ms > 0
    assert torch.get_num_threads() == before
    info = settings.device_info()
    assert info.key.endswith("|torch-eager-cputime|batch=2|threads=1")
    assert info.key.startswith("cpu:") and info.cores >= 1 and info.torch_version


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tvm"}, "backend 'tvm' is unknown"),
        ({"batch": 0}, "batch must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"clock": "cpu", "threads": 2}, "clock 'cpu' needs threads=1"),
        ({"backend": "onnxruntime", "compile": True}, "compile=true needs backend 'torch'"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LatencySettings(**kwargs)


def test_stratified_indices_cover_the_size_range_evenly():
    rng = np.random.default_rng(0)
    # Sizes pile up in the middle, as uniform arch sampling makes them.
    sizes = np.exp(np.concatenate([rng.normal(10, 0.3, 500), [7.0, 13.0]]))
    picked = stratified_indices(sizes, 20, bins=10, rng=rng)
    assert len(set(picked)) == 20
    assert {int(np.argmin(sizes)), int(np.argmax(sizes))} <= set(picked)
    logs = np.log(sizes[picked])
    # Far wider than 20 uniform draws, which would stay near the middle (std 0.3).
    assert np.std(logs) > 3 * 0.3


def test_stratified_sample_spans_smallest_to_largest():
    space = SearchSpace({"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2, 3, 4]})
    size = lambda arch: arch["a"] * arch["b"] * arch["c"]  # noqa: E731
    archs = stratified_sample(space, size, n=12, seed=0, pool_factor=3, bins=4)
    sizes = sorted(size(a) for a in archs)
    assert len({space.arch_id(a) for a in archs}) == 12
    assert sizes[0] == 1 and sizes[-1] == 64
    pool = tilted_pool(space, 30, np.random.default_rng(0))
    assert space.smallest() in pool and space.largest() in pool


def test_latency_table_has_the_documented_columns():
    net = TinyElastic()
    df = measure_latency_table(net, n=4, seed=0, settings=LatencySettings(**FAST), pool_factor=2)
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert (df["latency_ms"] > 0).all() and (df["latency_ms_iqr"] >= 0).all()
    assert (df["macs"] > 0).all() and (df["params"] > 0).all()
    assert df["device"].nunique() == 1 and (df["threads"] == 1).all() and (df["batch"] == 1).all()
    for text, aid in zip(df["arch"], df["arch_id"], strict=True):
        assert net.space.arch_id(net.space.parse(text)) == aid
    assert df.attrs["space_fingerprint"] == net.space.fingerprint()


def test_measure_archs_uses_each_arch_resolution():
    net = TinyElastic()
    small = {"resolution": 8, "width": 4, "depth": 1}
    large = {"resolution": 16, "width": 4, "depth": 1}
    df = measure_archs(net, [small, large], LatencySettings(**FAST))
    head = 4 * 10  # the linear head's MACs do not grow with resolution; the convs' grow 4x
    assert df["macs"].iloc[1] - head == 4 * (df["macs"].iloc[0] - head)


def test_decompose_records_leaf_blocks_and_input_shapes():
    specs = decompose(_model(), (3, 16, 16))
    names = [type(s.module).__name__ for s in specs]
    assert names == ["Conv2d", "ReLU", "Conv2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert [s.input_shape for s in specs][:3] == [(3, 16, 16), (8, 16, 16), (8, 16, 16)]
    assert specs[-1].input_shape == (8,)
    # Same structure at the same shape -> same key; the two ReLUs see different shapes.
    assert specs[1].key != specs[3].key
    again = decompose(_model(), (3, 16, 16))
    assert [s.key for s in again] == [s.key for s in specs]


def test_lut_fits_constant_and_round_trips(tmp_path):
    net = TinyElastic()
    settings = LatencySettings(**FAST)
    table = measure_latency_table(net, n=4, seed=1, settings=settings, pool_factor=2)
    lut = LatencyLUT(settings).fit(net, table)
    sums = lut.block_sums(net, [net.space.parse(t) for t in table["arch"]])
    assert lut.constant_ms == pytest.approx(float(np.median(table["latency_ms"] - sums)))
    entries = len(lut.entries)
    path = lut.save(tmp_path / "lut")
    loaded = LatencyLUT.load(path, net.space, device=lut.device)
    archs = [net.space.parse(t) for t in table["arch"]]
    np.testing.assert_allclose(loaded.predict(net, archs), lut.predict(net, archs))
    assert len(loaded.entries) == entries  # nothing re-timed: every block was in the table
    with pytest.raises(PredictorError, match="was measured on"):
        LatencyLUT.load(path, device="cuda:Other|torch-eager|batch=1|threads=1")
    with pytest.raises(PredictorError, match="built for search space"):
        LatencyLUT.load(path, SearchSpace({"x": [1, 2]}))


@pytest.mark.parametrize(("device", "message"), [
    ("cuda:x", "latency device 'cuda:x' is unknown"),
    ("gpu", "latency device 'gpu' is unknown"),
])
def test_a_device_that_is_no_device_is_refused(device, message):
    with pytest.raises(ConfigError, match=message):
        LatencySettings(device=device)


def test_cuda_n_parses_and_without_cuda_says_so_in_one_line(monkeypatch):
    from search.latency.measure import cuda_index

    assert [cuda_index(d) for d in ("cuda", "cuda:0", "cuda:3", "cpu", "auto")] == [0, 0, 3, None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="latency device 'cuda:1' requested but torch sees no CUDA"):
        LatencySettings(device="cuda:1").resolve()


def test_an_index_past_the_machines_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="'cuda:2': this machine has 2 CUDA devices"):
        LatencySettings(device="cuda:2").resolve()
    assert LatencySettings(device="cuda:1", threads=1).resolve().device == "cuda:1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_on_a_chosen_gpu(backend):
    from search.latency.measure import measure_latency

    index = torch.cuda.device_count() - 1
    settings = LatencySettings(backend=backend, device=f"cuda:{index}", warmup=2, repeats=5)
    result = measure_latency(torch.nn.Conv2d(3, 8, 3), (1, 3, 32, 32), settings)
    assert result.median_ms > 0
    info = settings.device_info()
    assert info.key.startswith(f"cuda:{torch.cuda.get_device_name(index)}|")
