"""Latency tables: measured subnets of a supernet, one row per arch, tagged with the device.

Columns: arch_id, arch (canonical JSON), latency_ms, latency_iqr_ms, macs, params, device,
backend, batch, threads. `df.attrs` carries the full device facts and the space fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from nasbench_core.errors import ArchError, ConfigError
from search.costs import count_macs, count_params, subnet_input_shape
from search.latency.measure import (
    LatencyResult,
    LatencySettings,
    measure_latency,
    prepare_runner,
    time_runner,
    torch_threads,
)
from search.latency.sampling import stratified_sample
from supernets.space import Arch, SearchSpace

COLUMNS = [
    "arch_id", "arch", "latency_ms", "latency_iqr_ms", "macs", "params",
    "device", "backend", "batch", "threads",
]

Progress = Callable[[int, int], None]


def _subnet(supernet: nn.Module, arch: Arch, extract: bool) -> nn.Module:
    if extract:
        return supernet.extract(arch)
    supernet.set_active(arch)
    return supernet


def measure_archs(
    supernet: nn.Module,
    archs: Iterable[Mapping[str, Any]],
    settings: LatencySettings | None = None,
    *,
    extract: bool = True,
    input_shape: Sequence[int] | None = None,
    rounds: int = 1,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """Measure each arch's subnet (extracted, or the supernet set active) at its resolution.

    With `rounds > 1` the archs are timed in interleaved rounds (shuffled order, `repeats /
    rounds` timed calls per visit) and each arch's samples are pooled: a burst of load from
    other processes then hits all archs alike instead of skewing the ones timed during it.
    """
    space: SearchSpace = supernet.space
    settings = (settings or LatencySettings()).resolve()
    if rounds < 1:
        raise ConfigError(f"latency rounds must be >= 1, got {rounds}")
    if rounds > 1 and not extract:
        raise ConfigError("latency rounds > 1 needs extract=true (each arch keeps its own subnet)")
    info = settings.device_info()
    archs = [space.validate(a) for a in archs]
    shapes = [subnet_input_shape(supernet, a, input_shape) for a in archs]
    rows, samples, runners = [], [[] for _ in archs], []
    per_visit = max(1, -(-settings.repeats // rounds))
    total, done = len(archs) * rounds, 0
    with torch_threads(settings.threads):
        for i, (arch, shape) in enumerate(zip(archs, shapes, strict=True)):
            module = supernet.extract(arch)
            rows.append({"arch_id": space.arch_id(arch), "arch": space.canonical_json(arch),
                         "macs": count_macs(module, shape), "params": count_params(module)})
            runner = prepare_runner(module if extract else _subnet(supernet, arch, False),
                                    shape, settings)
            samples[i] += time_runner(runner, settings.warmup, per_visit)
            if rounds > 1:
                runners.append(runner)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
        rng = np.random.default_rng(seed)
        for _ in range(rounds - 1):
            for i in rng.permutation(len(archs)):
                samples[i] += time_runner(runners[i], min(settings.warmup, 2), per_visit)
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
    for row, times in zip(rows, samples, strict=True):
        result = LatencyResult.from_samples(times)
        row.update(latency_ms=result.median_ms, latency_iqr_ms=result.iqr_ms, device=info.key,
                   backend=info.backend, batch=info.batch, threads=info.threads)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(device_info=info.to_dict(), space_fingerprint=space.fingerprint())
    return df


def measure_latency_table(
    supernet: nn.Module,
    space: SearchSpace | None = None,
    n: int = 100,
    seed: int = 0,
    settings: LatencySettings | None = None,
    extract: bool = True,
    *,
    input_shape: Sequence[int] | None = None,
    pool_factor: int = 3,
    bins: int = 10,
    rounds: int = 1,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """Sample `n` archs stratified by MACs over the space's size range and measure each."""
    space = space or supernet.space
    if space != supernet.space:
        raise ArchError("measure_latency_table: `space` differs from the supernet's space")

    def macs_of(arch: Arch) -> float:
        return float(count_macs(supernet.extract(arch), subnet_input_shape(supernet, arch, input_shape)))

    archs = stratified_sample(space, macs_of, n, seed, pool_factor=pool_factor, bins=bins)
    return measure_archs(
        supernet, archs, settings, extract=extract, input_shape=input_shape, rounds=rounds,
        seed=seed, on_progress=on_progress,
    )


def latency_objective(
    supernet: nn.Module,
    *,
    device: str = "cpu",
    input_shape: Sequence[int] | None = None,
    extract: bool = True,
    **settings: Any,
) -> Callable[[Mapping[str, Any]], float]:
    """arch -> measured median latency (ms) on this machine, cached by arch_id."""
    resolved = LatencySettings(device=device, **settings).resolve()
    cache: dict[str, float] = {}

    def fn(arch: Mapping[str, Any]) -> float:
        aid = supernet.space.arch_id(arch)
        if aid not in cache:
            arch = supernet.space.validate(arch)
            module = _subnet(supernet, arch, extract)
            shape = subnet_input_shape(supernet, arch, input_shape)
            cache[aid] = measure_latency(module, shape, resolved).median_ms
        return cache[aid]

    return fn
