"""Latency tables: measured subnets of a supernet, one row per arch, tagged with the device.

Columns: arch_id, arch (canonical JSON), latency_ms (median), latency_ms_iqr, latency_ms_retimed
(how often a noisy measurement was re-timed), latency_ms_noisy (still over the IQR/median
threshold after that), macs, params, device, backend, batch, threads. `df.attrs` carries the
full device facts, the timing settings, the space fingerprint and the machine state (load
average, CPU clock) at the start and end of the measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
from torch import nn

from nasbench_core.errors import ArchError
from search.costs import count_macs, count_params, subnet_input_shape
from search.latency.device import machine_state
from search.latency.measure import (
    LatencyResult,
    LatencySettings,
    Progress,
    Visit,
    VisitKey,
    prepare_runner,
    time_robust,
    torch_threads,
)
from search.latency.sampling import stratified_sample
from supernets.space import Arch, SearchSpace

COLUMNS = [
    "arch_id", "arch", "latency_ms", "latency_ms_iqr", "latency_ms_retimed", "latency_ms_noisy",
    "macs", "params", "device", "backend", "batch", "threads",
]


def result_columns(result: LatencyResult) -> dict[str, Any]:
    """A measurement as the table's latency columns (also an objective's `details`)."""
    return {"latency_ms": result.median_ms, "latency_ms_iqr": result.iqr_ms,
            "latency_ms_retimed": result.retimed, "latency_ms_noisy": result.noisy}


def time_archs(
    supernet: nn.Module,
    archs: Sequence[Arch],
    shapes: Sequence[Sequence[int]],
    settings: LatencySettings,
    *,
    modules: Sequence[nn.Module] | None = None,
    seed: int = 0,
    on_progress: Progress | None = None,
    done: Mapping[VisitKey, Sequence[float]] | None = None,
    on_visit: Callable[[Visit], None] | None = None,
) -> list[LatencyResult]:
    """Time validated archs together (interleaved rounds, noisy ones re-timed) with resolved
    settings: their extracted `modules`, or, without them, the supernet itself with each arch
    set before its visits (ONNX Runtime exports the arch active when its runner is made).
    `done` and `on_visit` resume and journal the visits (see `time_robust`)."""
    resumable = {"seed": seed, "on_progress": on_progress, "done": done, "on_visit": on_visit}
    with torch_threads(settings.threads):
        if modules is not None:
            runners = [prepare_runner(m, shape, settings) for m, shape in zip(modules, shapes, strict=True)]
            return time_robust(runners, settings, **resumable)
        runners = []
        for arch, shape in zip(archs, shapes, strict=True):
            supernet.set_active(arch)
            runners.append(prepare_runner(supernet, shape, settings))
        return time_robust(runners, settings, before_visit=lambda i: supernet.set_active(archs[i]),
                           **resumable)


def measure_archs(
    supernet: nn.Module,
    archs: Iterable[Mapping[str, Any]],
    settings: LatencySettings | None = None,
    *,
    extract: bool = True,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    on_progress: Progress | None = None,
    done: Mapping[VisitKey, Sequence[float]] | None = None,
    on_visit: Callable[[Visit], None] | None = None,
) -> pd.DataFrame:
    """Measure each arch's subnet (extracted, or the supernet set active) at its resolution.

    The archs are timed together in `settings.rounds` interleaved rounds (shuffled order by
    `seed`), and those whose IQR/median exceeds `settings.max_rel_iqr` are re-timed up to
    `settings.max_retimes` times (see `time_robust`). `on_visit` sees each visit as it is
    timed (a journal); `done` holds the visits a killed measurement of the same archs, in the
    same order, with the same settings and seed finished, which are not timed again.
    """
    space: SearchSpace = supernet.space
    settings = (settings or LatencySettings()).resolve()
    info = settings.device_info()
    archs = [space.validate(a) for a in archs]
    shapes = [subnet_input_shape(supernet, a, input_shape) for a in archs]
    rows, modules = [], []
    for arch, shape in zip(archs, shapes, strict=True):
        module = supernet.extract(arch)
        rows.append({"arch_id": space.arch_id(arch), "arch": space.canonical_json(arch),
                     "macs": count_macs(module, shape), "params": count_params(module)})
        modules.append(module)
    before = machine_state()
    results = time_archs(supernet, archs, shapes, settings, modules=modules if extract else None,
                         seed=seed, on_progress=on_progress, done=done, on_visit=on_visit)
    for row, result in zip(rows, results, strict=True):
        row.update(result_columns(result), device=info.key, backend=info.backend,
                   batch=info.batch, threads=info.threads)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(device_info=info.to_dict(), settings=asdict(settings),
                    space_fingerprint=space.fingerprint(),
                    machine_state={"start": before, "end": machine_state()})
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
        supernet, archs, settings, extract=extract, input_shape=input_shape, seed=seed,
        on_progress=on_progress,
    )


class LatencyObjective:
    """arch -> measured median latency (ms) on this machine, cached by arch_id.

    Calling it times one arch (its rounds back to back, re-timed when noisy). `measure_many`
    times a batch together in interleaved rounds, which is what a population should use.
    `details(arch)` gives what the measurement found besides the median, keyed like the
    table's columns: `latency_ms_iqr`, `latency_ms_retimed`, `latency_ms_noisy`.
    """

    def __init__(self, supernet: nn.Module, settings: LatencySettings, *,
                 input_shape: Sequence[int] | None = None, extract: bool = True):
        self.supernet, self.settings = supernet, settings.resolve()
        self.input_shape, self.extract = input_shape, extract
        self._results: dict[str, LatencyResult] = {}

    def _aid(self, arch: Mapping[str, Any]) -> str:
        return self.supernet.space.arch_id(arch)

    def measure_many(self, archs: Sequence[Mapping[str, Any]]) -> list[float]:
        """Median latencies of `archs`; the ones not yet measured are timed together."""
        space = self.supernet.space
        todo = {self._aid(a): space.validate(a) for a in archs}
        todo = {aid: a for aid, a in todo.items() if aid not in self._results}
        if todo:
            new = list(todo.values())
            shapes = [subnet_input_shape(self.supernet, a, self.input_shape) for a in new]
            modules = [self.supernet.extract(a) for a in new] if self.extract else None
            results = time_archs(self.supernet, new, shapes, self.settings, modules=modules,
                                 seed=len(self._results))
            self._results.update(zip(todo, results, strict=True))
        return [self._results[self._aid(a)].median_ms for a in archs]

    def __call__(self, arch: Mapping[str, Any]) -> float:
        return self.measure_many([arch])[0]

    def details(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """The measured arch's IQR (ms), re-timing count and noisy flag (KeyError if unmeasured)."""
        columns = result_columns(self._results[self._aid(arch)])
        return {k: v for k, v in columns.items() if k != "latency_ms"}


def latency_objective(
    supernet: nn.Module,
    *,
    device: str = "cpu",
    input_shape: Sequence[int] | None = None,
    extract: bool = True,
    **settings: Any,
) -> LatencyObjective:
    """The `latency_ms` objective: a `LatencyObjective` with these `LatencySettings`."""
    return LatencyObjective(supernet, LatencySettings(device=device, **settings),
                            input_shape=input_shape, extract=extract)
