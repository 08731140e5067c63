"""Benchmark registry and harness. A benchmark is `run(opts) -> dict of figures`.

Modules in `nasbench/bench/` register themselves with `@benchmark(name, help, options=Model)`;
the harness checks `--set` values against the model before any work starts (a typo or a wrong
type is a one-line error in milliseconds, not a traceback after an hour), hands the validated
model over as `opts.settings`, adds environment facts and writes `results/bench/<name>.json`
atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from nasbench_core.atomic import atomic_write_text
from nasbench_core.registry import Registry

S = TypeVar("S", bound="BenchSettings")


class BenchSettings(BaseModel):
    """Base of every benchmark's options model. Strict, because `--set` values arrive typed by
    YAML (`3` is an int, `0.5` a float, `a,b` a string), so `batch=abc` or `batch=2.5` is a
    mistake to name, not a value to coerce; unknown keys are refused, so a typo is never
    silently ignored.

    Field defaults are the full run's; `quick_defaults` replaces the fields the user did not
    set when `--quick` asks for small sizes (see `resolve`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    quick_defaults: ClassVar[dict[str, Any]] = {}

    def resolve(self: S, quick: bool) -> S:
        """These settings for a `--quick` run (or unchanged): fields given explicitly win."""
        if not quick:
            return self
        return self.model_copy(update={key: value for key, value in self.quick_defaults.items()
                                       if key not in self.model_fields_set})

    @classmethod
    def of(cls: type[S], opts: BenchOptions) -> S:
        """`opts.settings` as this model; `run_benchmark` validated it against this model."""
        if not isinstance(opts.settings, cls):
            raise TypeError(f"opts.settings is {type(opts.settings).__name__}, not {cls.__name__}: "
                            "run benchmarks through run_benchmark")
        return opts.settings


Flag = Annotated[bool, Field(strict=False)]
"""A yes/no option: true/false, 1/0, yes/no, on/off (`--set peer_large=1` has always meant yes);
anything else is refused rather than read as no."""


def _split_commas(value: Any) -> Any:
    """`a, b` -> ["a", "b"]: `--set x=a,b` reaches us as one string, the way YAML reads it."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def one_of(known: Sequence[str] | Callable[[], Sequence[str]], what: str) -> Any:
    """The type of one name from `known`: a tuple, or a function called at validation time for
    names a registry fills on import (so declaring a model imports nothing heavy)."""

    def check(name: str) -> str:
        allowed = list(known() if callable(known) else known)
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(allowed)}")
        return name

    return Annotated[str, AfterValidator(check)]


def names_of(known: Sequence[str] | Callable[[], Sequence[str]], what: str) -> Any:
    """The type of a non-empty list of names from `known`, given as a list or as `a,b`."""
    return Annotated[list[one_of(known, what)], BeforeValidator(_split_commas), Field(min_length=1)]


def _optimizer_names() -> list[str]:
    import search

    return search.list_optimizers()


OptimizerNames = names_of(_optimizer_names, "optimizer")
"""Registered search optimizers (the `optimizers` and `search` benchmarks compare them)."""


@dataclass
class BenchOptions:
    """What the harness passes a benchmark: CLI flags, the raw `--set` values (kept for the
    report) and `settings`, those values validated by the benchmark's options model."""

    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    out_dir: Path = Path("results/bench")
    settings: BenchSettings | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    run: Callable[[BenchOptions], dict[str, Any]]


def _discover() -> None:
    package = importlib.import_module("nasbench.bench")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "registry" and not info.name.startswith("_"):
            importlib.import_module(f"nasbench.bench.{info.name}")


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", discover=_discover)


def benchmark(name: str, help: str, *, options: type[BenchSettings]) -> Callable:
    """Register `fn` as benchmark `name`; `options` is the model its `--set` values must fit."""

    def register(fn: Callable[[BenchOptions], dict[str, Any]]) -> Callable:
        BENCHMARKS.add(name, Benchmark(name, help, fn), options=options)
        return fn

    return register


def list_benchmarks() -> list[Benchmark]:
    return [entry.obj for entry in BENCHMARKS]


def environment(device: str) -> dict[str, Any]:
    import torch

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
    }


def run_benchmark(name: str, opts: BenchOptions) -> tuple[dict[str, Any], Path]:
    """Validate `opts.params` against the benchmark's model (a UserError before any work), run
    it with the validated settings and write its report."""
    bench = BENCHMARKS.get(name)
    settings = BENCHMARKS.validate(name, opts.params, where="--set").resolve(opts.quick)
    started = time.perf_counter()
    figures = bench.run(dataclasses.replace(opts, settings=settings))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    target = Path(opts.out_dir) / f"{name}.json"
    previous = _previous_report(target, name, opts.quick) if _some_parts(settings) else None
    figures, times = merged_figures(previous, figures, now)
    report = {
        "benchmark": name,
        "timestamp": now,
        "quick": opts.quick,
        "seed": opts.seed,
        "params": opts.params,
        "wall_s": round(time.perf_counter() - started, 3),
        "environment": environment(opts.device),
        "figures": figures,
        "figure_times": times,
    }
    atomic_write_text(target, json.dumps(report, indent=2, default=str))
    return report, target


def _some_parts(settings: BenchSettings) -> bool:
    """True when a benchmark with `parts` ran only some of them."""
    field_info = type(settings).model_fields.get("parts")
    return field_info is not None and set(settings.parts) != set(field_info.default)


def _previous_report(target: Path, name: str, quick: bool) -> dict[str, Any] | None:
    """The report a partial run adds to: the same benchmark at the same size, if readable."""
    try:
        old = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("benchmark") != name or old.get("quick") != quick:
        return None
    return old


def merged_figures(previous: dict[str, Any] | None, figures: dict[str, Any],
                   now: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A run of some parts replaces their figures and keeps the others' from `previous`, each
    figure with the time it was measured (`figure_times`), so one part never erases another."""
    times = {key: now for key in figures}
    if previous is None:
        return figures, times
    kept = {k: v for k, v in previous.get("figures", {}).items() if k not in figures}
    old_times = previous.get("figure_times") or {}
    return {**kept, **figures}, {**{k: old_times.get(k, previous.get("timestamp", "")) for k in kept},
                                 **times}
