"""Benchmark registry and harness. A benchmark is `run(opts) -> dict of figures`.

Modules in `nasbench/bench/` register themselves with `@benchmark(name)`; the harness adds
environment facts and writes `results/bench/<name>.json` atomically.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbench_core.atomic import atomic_write_text
from nasbench_core.registry import Registry


@dataclass
class BenchOptions:
    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    out_dir: Path = Path("results/bench")


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


def benchmark(name: str, help: str) -> Callable:
    def register(fn: Callable[[BenchOptions], dict[str, Any]]) -> Callable:
        BENCHMARKS.add(name, Benchmark(name, help, fn))
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
    bench = BENCHMARKS.get(name)
    started = time.perf_counter()
    figures = bench.run(opts)
    report = {
        "benchmark": name,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": opts.quick,
        "seed": opts.seed,
        "params": opts.params,
        "wall_s": round(time.perf_counter() - started, 3),
        "environment": environment(opts.device),
        "figures": figures,
    }
    target = Path(opts.out_dir) / f"{name}.json"
    atomic_write_text(target, json.dumps(report, indent=2, default=str))
    return report, target
