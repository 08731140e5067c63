"""`nasbench bench latency --set parts=robust`: does robust timing make a re-timing agree?

Times the same uniformly random subnets twice with the old defaults (one block of `repeats`
calls per subnet, no re-timing) and twice with the new ones (interleaved rounds, noisy
subnets re-timed), alternating old/new so both see the same load, while `busy` Python busy
loops compete for the CPU. The figure of merit is the Kendall tau between a configuration's
two passes: how far a search can trust the order of two measured latencies.
Goal (issue 18): tau >= 0.85 with the new defaults.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

from torch import nn

from search.latency import LatencySettings

BUSY_LOOP = "while True: pass"


@contextmanager
def busy_processes(count: int):
    """`count` Python busy loops (the competing load), killed on exit; yields their pids."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def uniform_archs(space, n: int, seed: int, resolution: int | None = None) -> list[dict]:
    """`n` distinct random subnets: the archs a search proposes, clustered mid-range in size;
    all at `resolution` when given (smaller inputs keep the benchmark short)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    archs: dict[str, dict] = {}
    while len(archs) < n:
        arch = space.sample(rng)
        if resolution is not None:
            arch = {**arch, "resolution": resolution}
        arch = space.canonical(space.validate(arch))
        archs.setdefault(space.arch_id(arch), arch)
    return list(archs.values())


def configurations(base: LatencySettings, cpu_clock: bool) -> dict[str, LatencySettings]:
    """The old defaults (one block, no re-timing), the new ones, and optionally the new ones
    timing the thread's CPU time (blind to the time the busy loop takes from us)."""
    configs = {"old_defaults": replace(base, rounds=1, max_retimes=0), "new_defaults": base}
    if cpu_clock:
        configs["new_defaults_cpu_clock"] = replace(base, clock="cpu")
    return configs


def robust_timing(net: nn.Module, base: LatencySettings, *, n: int, busy: int, seed: int,
                  resolution: int | None = None, cpu_clock: bool = False) -> dict[str, Any]:
    """Two passes per configuration over `n` uniform subnets under `busy` competing loops.

    Each subnet is extracted and made into a runner once per clock (one ONNX export, not one
    per pass), and every pass times the same runners with `time_robust`, the code behind
    `measure_archs` and the `latency_ms` objective."""
    import numpy as np

    from search.costs import count_macs, subnet_input_shape
    from search.latency import machine_state, time_robust
    from search.latency.measure import prepare_runner, torch_threads
    from search.predictors import kendall_tau, regression_metrics

    archs = uniform_archs(net.space, n, seed, resolution)
    configs = configurations(base, cpu_clock)
    shapes = [subnet_input_shape(net, a) for a in archs]
    modules = [net.extract(a) for a in archs]
    macs = np.array([count_macs(m, shape) for m, shape in zip(modules, shapes, strict=True)], float)
    results: dict[str, list] = {name: [] for name in configs}
    with torch_threads(base.threads), busy_processes(busy) as procs:
        runners = {clock: [prepare_runner(m, shape, replace(base, clock=clock))
                           for m, shape in zip(modules, shapes, strict=True)]
                   for clock in dict.fromkeys(s.clock for s in configs.values())}
        for p in range(2):
            for name, s in configs.items():
                before, t0 = machine_state(), time.perf_counter()
                timed = time_robust(runners[s.clock], s, seed=seed + p)
                results[name].append((timed, round(time.perf_counter() - t0, 1),
                                      [before["loadavg_1m"], machine_state()["loadavg_1m"]]))
        busy_alive = all(proc.poll() is None for proc in procs)
    old = np.array([[r.median_ms for r in timed] for timed, _, _ in results["old_defaults"]])
    figures: dict[str, Any] = {
        "n_archs": n, "archs": "uniformly random (a search's proposals)", "resolution": resolution,
        "busy_processes": busy, "busy_alive_throughout": busy_alive,
        "backend": base.backend_label, "threads": base.threads, "batch": base.batch,
        "latency_ms_range_old_defaults": [float(old.min()), float(old.max())],
        "cpu_freq_mhz": machine_state()["cpu_freq_mhz"],
    }
    for name, runs in results.items():
        medians = [np.array([r.median_ms for r in timed]) for timed, _, _ in runs]
        figures[name] = {
            "settings": {k: v for k, v in asdict(configs[name]).items()
                         if k in ("warmup", "repeats", "rounds", "max_rel_iqr", "max_retimes",
                                  "clock")},
            "retest_tau": kendall_tau(medians[0], medians[1]),
            "retest_mape": regression_metrics(medians[0], medians[1])["mape"],
            "macs_tau": kendall_tau(macs, (medians[0] + medians[1]) / 2),
            "median_rel_iqr": [round(float(np.median([r.rel_iqr for r in t])), 4) for t, _, _ in runs],
            "retimed_share": [float(np.mean([r.retimed > 0 for r in t])) for t, _, _ in runs],
            "noisy_share": [float(np.mean([r.noisy for r in t])) for t, _, _ in runs],
            "pass_s": [s for _, s, _ in runs],
            "loadavg_1m": [load for _, _, load in runs],
        }
    figures["goal_met"] = bool(figures["new_defaults"]["retest_tau"] >= 0.85)
    figures["new_minus_old_tau"] = round(
        figures["new_defaults"]["retest_tau"] - figures["old_defaults"]["retest_tau"], 4)
    return figures
