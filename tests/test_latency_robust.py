"""Robust timing: interleaved rounds by default, median and IQR of every timing, noisy
measurements re-timed up to a bound and flagged, the machine state recorded with each table.

Fake runners (callables returning scripted milliseconds) stand in for the clock, so every
number here is known in advance and checked against numpy.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from torch import nn

import search.latency.device as device_mod
import search.latency.measure as measure_mod
import search.latency.table as table_mod
from search.latency import (
    COLUMNS,
    LatencySettings,
    latency_objective,
    machine_state,
    measure_archs,
    time_robust,
)
from supernets.space import SearchSpace


def scripted(values, log=None, name=None):
    """A runner returning `values` in a cycle; appends `name` to `log` on each call."""
    it = itertools.cycle(values)

    def run() -> float:
        if log is not None:
            log.append(name)
        return float(next(it))

    return run


QUIET = LatencySettings(threads=1, warmup=0, repeats=8, rounds=1, max_retimes=0)


def test_robust_timing_is_on_by_default():
    s = LatencySettings()
    assert s.rounds > 1 and s.max_retimes > 0 and 0 < s.max_rel_iqr <= 0.1


def test_median_and_iqr_are_numpys_on_known_timings():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 5.0]  # ties included
    s = LatencySettings(threads=1, warmup=0, repeats=12, rounds=3, max_retimes=0)
    (result,) = time_robust([scripted(values)], s)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    assert sorted(result.samples_ms) == sorted(values)
    assert result.median_ms == pytest.approx(med) and result.iqr_ms == pytest.approx(q3 - q1)
    assert result.iqr_ms == pytest.approx(2.25)  # not the range, not a std, not q3 alone


def test_several_models_are_timed_in_interleaved_shuffled_rounds():
    log: list[str] = []
    names = "abcde"
    runners = [scripted([1.0], log, n) for n in names]
    s = LatencySettings(threads=1, warmup=1, repeats=12, rounds=4, max_retimes=0)
    results = time_robust(runners, s, seed=3)
    assert all(len(r.samples_ms) == 12 for r in results)
    # first visit: warmup + 3 timed calls per model, in order; then rounds in shuffled order
    per_visit = 3
    visits = [log[i] for i in range(0, len(names) * (1 + per_visit), 1 + per_visit)]
    assert visits == list(names)
    rest = log[len(names) * (1 + per_visit):]
    later = [rest[i] for i in range(0, len(rest), 1 + per_visit)]  # 1 warmup + 3 timed each
    rounds = [later[i:i + len(names)] for i in range(0, len(later), len(names))]
    assert len(rounds) == 3 and all(sorted(r) == list(names) for r in rounds)
    assert any(r != list(names) for r in rounds)  # shuffled, not the same order every time


def test_a_burst_of_load_hits_interleaved_models_alike():
    """A slow spell during one visit: interleaved, each model gets a share of it and the
    medians keep the true order; timed one after another, the model caught in it is ruined."""
    clock = itertools.count()

    def runner(base: float):
        def run() -> float:
            t = next(clock)
            return base * (5.0 if 40 <= t < 80 else 1.0)  # calls 40..79 are 5x slower
        return run

    bases = [1.0, 1.1, 1.2, 1.3]
    s = LatencySettings(threads=1, warmup=0, repeats=40, rounds=10, max_retimes=0)
    medians = [r.median_ms for r in time_robust([runner(b) for b in bases], s, seed=0)]
    assert medians == pytest.approx(bases)


def test_a_noisy_measurement_is_retimed_up_to_the_bound_and_stays_flagged():
    calls: list[str] = []
    noisy = scripted([1.0, 2.0], calls, "noisy")  # IQR/median 1/1.5 forever
    quiet = scripted([1.0], calls, "quiet")
    s = LatencySettings(threads=1, warmup=3, repeats=6, rounds=2, max_rel_iqr=0.1, max_retimes=3)
    r_noisy, r_quiet = time_robust([noisy, quiet], s)
    assert (r_noisy.retimed, r_noisy.noisy) == (3, True)
    assert (r_quiet.retimed, r_quiet.noisy) == (0, False)
    # first attempt: (3 warmup + 3 timed) + (2 + 3); each re-timing: 2 visits of 2 + 3
    assert calls.count("quiet") == 11
    assert calls.count("noisy") == 11 + 3 * 10
    assert r_noisy.rel_iqr == pytest.approx(1.0 / 1.5)


def test_a_noise_burst_is_retimed_and_the_quiet_attempt_kept():
    values = iter([1.0, 3.0, 1.0, 3.0] + [2.0] * 100)  # first attempt noisy, then steady
    s = LatencySettings(threads=1, warmup=0, repeats=4, rounds=1, max_rel_iqr=0.1, max_retimes=5)
    (result,) = time_robust([lambda: next(values)], s)
    assert (result.retimed, result.noisy) == (1, False)
    assert result.median_ms == 2.0 and result.iqr_ms == 0.0


def test_without_retimes_noise_is_only_flagged():
    (result,) = time_robust([scripted([1.0, 2.0])], QUIET)
    assert (result.retimed, result.noisy) == (0, True)


class Elastic(nn.Module):
    """Stand-in supernet: its extracted subnet's width says how long the fake clock takes."""

    def __init__(self):
        super().__init__()
        self.space = SearchSpace({"width": [2, 4, 8, 16]})

    def build_config(self):
        return {"name": "elastic", "in_chans": 3}

    def extract(self, arch):
        w = self.space.validate(arch)["width"]
        return nn.Sequential(nn.Conv2d(3, w, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def fake_clock(monkeypatch, jitter: dict[int, list[float]] | None = None, log=None):
    """Runners of width w return `w * x` for x cycling over `jitter[w]` (default [1, 1.1])."""

    def prepare(module, shape, settings):
        w = module[0].out_channels
        return scripted([w * x for x in (jitter or {}).get(w, [1.0, 1.1])], log, w)

    monkeypatch.setattr(table_mod, "prepare_runner", prepare)
    monkeypatch.setattr(measure_mod, "prepare_runner", prepare)


def test_table_records_iqr_retimes_noise_and_machine_state(monkeypatch):
    fake_clock(monkeypatch, {8: [1.0, 2.0]})  # width 8 is noisy for good
    s = LatencySettings(threads=1, warmup=0, repeats=8, rounds=2, max_rel_iqr=0.1, max_retimes=2)
    net = Elastic()
    df = measure_archs(net, [{"width": w} for w in (2, 4, 8, 16)], s, input_shape=(3, 4, 4))
    assert list(df.columns) == COLUMNS
    for w, row in zip((2, 4, 8, 16), df.itertuples(), strict=True):
        pattern = [1.0, 2.0] if w == 8 else [1.0, 1.1]
        q1, med, q3 = np.percentile(np.resize(np.multiply(w, pattern), 8), [25, 50, 75])
        assert row.latency_ms == pytest.approx(med) and row.latency_ms_iqr == pytest.approx(q3 - q1)
    assert list(df["latency_ms_noisy"]) == [False, False, True, False]
    assert list(df["latency_ms_retimed"]) == [0, 0, 2, 0]
    state = df.attrs["machine_state"]
    assert set(state) == {"start", "end"}
    for snap in state.values():
        assert {"loadavg_1m", "loadavg_5m", "loadavg_15m", "cpu_freq_mhz", "time_utc"} <= set(snap)
    assert df.attrs["settings"]["rounds"] == 2 and df.attrs["settings"]["max_retimes"] == 2


def test_the_latency_objective_exposes_what_it_measured(monkeypatch):
    log: list[int] = []
    fake_clock(monkeypatch, {4: [1.0, 1.0, 1.0, 3.0]}, log)
    fn = latency_objective(Elastic(), device="cpu", input_shape=(3, 4, 4), threads=1, warmup=0,
                           repeats=8, rounds=4, max_rel_iqr=0.1, max_retimes=1)
    assert fn.settings.rounds == 4  # the search's `latency:` settings reach the timing
    values = fn.measure_many([{"width": 2}, {"width": 4}])
    assert values == pytest.approx([np.median([2.0, 2.2] * 4), 4.0])
    wide = fn.details({"width": 4})
    q1, q3 = np.percentile([4.0, 4.0, 4.0, 12.0] * 2, [25, 75])
    assert wide == {"latency_ms_iqr": pytest.approx(q3 - q1), "latency_ms_retimed": 1,
                    "latency_ms_noisy": True}
    assert fn.details({"width": 2})["latency_ms_retimed"] == 0
    calls = len(log)
    assert fn({"width": 4}) == values[1] and len(log) == calls  # cached by arch_id
    assert fn({"width": 16}) == pytest.approx(np.median([16.0, 17.6] * 4))
    with pytest.raises(KeyError):
        fn.details({"width": 8})  # never measured


def test_machine_state_reads_load_and_clock(monkeypatch):
    state = machine_state()
    assert state["loadavg_1m"] == pytest.approx(os.getloadavg()[0], abs=0.5)
    assert state["cpu_freq_mhz"] is None or state["cpu_freq_mhz"] > 0
    monkeypatch.setattr(device_mod.os, "getloadavg", lambda: (1.5, 2.5, 3.5))
    monkeypatch.setattr(device_mod, "cpu_freq_mhz", lambda: (None, None))
    state = machine_state()
    assert (state["loadavg_1m"], state["loadavg_5m"], state["loadavg_15m"]) == (1.5, 2.5, 3.5)
    assert state["cpu_freq_mhz"] is None and state["cpu_freq_source"] is None
    json.dumps(state)  # goes into Parquet metadata and manifests


def test_cpu_clock_falls_back_to_sysfs_then_proc_cpuinfo(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 1000.0\nprocessor\t: 1\ncpu MHz\t\t: 3000.0\n")
    paths = {"/proc/cpuinfo": cpuinfo, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq":
             tmp_path / "absent"}
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    monkeypatch.setattr(device_mod, "Path", lambda p: paths.get(str(p), Path(p)))
    assert device_mod.cpu_freq_mhz() == (2000.0, "/proc/cpuinfo")
    (tmp_path / "absent").write_text("2400000\n")  # kHz
    assert device_mod.cpu_freq_mhz() == (2400.0, "sysfs")


def test_measure_run_records_machine_state_in_manifest_and_table(monkeypatch, tmp_path):
    import pyarrow.parquet as pq

    from nasbench.config import RunConfig
    from nasbench.runners import latency

    monkeypatch.setattr(table_mod, "prepare_runner", lambda module, shape, s: scripted([1.0, 1.02]))
    run = latency.measure(latency.LatencyMeasureConfig(
        run=RunConfig(root=tmp_path, name="lat"),
        latency=latency.MeasureSection(n=4, pool_factor=1, device="cpu", threads=1, warmup=0,
                                       repeats=4),
    ))
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["settings"]["rounds"] == 5 and manifest["settings"]["max_retimes"] == 2
    assert manifest["machine_state"]["start"]["loadavg_1m"] is not None
    meta = pq.read_schema(run.path / "latency.parquet").metadata
    assert json.loads(meta[b"machine_state"]) == manifest["machine_state"]
    table = run.read_table("latency")
    assert list(table.columns) == COLUMNS
    assert table["latency_ms_iqr"].to_numpy() == pytest.approx([0.02] * 4)  # of 1.0, 1.02, 1.0, 1.02
    assert not table["latency_ms_noisy"].any() and (table["latency_ms_retimed"] == 0).all()


def test_robust_bench_compares_old_and_new_defaults_under_a_busy_loop(monkeypatch):
    """The `robust` part of `bench latency` on a fake clock: both configurations timed twice,
    the busy loop running throughout and gone afterwards."""
    from nasbench.bench import _latency_robust as bench

    started = []
    real_busy = bench.busy_processes

    def watched(count):
        manager = real_busy(count)

        class Wrap:
            def __enter__(self):
                procs = manager.__enter__()
                started.extend(procs)
                return procs

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Wrap()

    monkeypatch.setattr(bench, "busy_processes", watched)
    fake_clock(monkeypatch, {8: [1.0, 2.0]})
    base = LatencySettings(threads=1, warmup=0, repeats=4, rounds=2).resolve()
    net = Elastic()
    net.space = SearchSpace({"resolution": [4], "width": [2, 4, 8, 16]})
    fig = bench.robust_timing(net, base, n=4, busy=1, seed=0, cpu_clock=True)
    assert len(started) == 1 and started[0].poll() is not None  # killed after the run
    assert fig["busy_alive_throughout"] and fig["n_archs"] == 4
    assert set(fig) >= {"old_defaults", "new_defaults", "new_defaults_cpu_clock", "goal_met"}
    old, new = fig["old_defaults"], fig["new_defaults"]
    assert (old["settings"]["rounds"], old["settings"]["max_retimes"]) == (1, 0)
    assert (new["settings"]["rounds"], new["settings"]["max_retimes"]) == (2, 2)
    assert fig["new_defaults_cpu_clock"]["settings"]["clock"] == "cpu"
    assert old["retest_tau"] == new["retest_tau"] == 1.0  # the fake clock repeats itself
    assert old["retimed_share"] == [0.0, 0.0] and new["retimed_share"] == [0.25, 0.25]
    assert new["noisy_share"] == [0.25, 0.25]
    assert fig["goal_met"]
