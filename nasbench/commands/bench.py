"""`nasbench bench NAME | --list`: run a registered benchmark, write $NASBENCH_RESULTS/bench/NAME.json."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nasbench.commands.common import SET_OPTION
from nasbench.config.loader import parse_overrides
from nasbench.errors import UserError


def command(
    name: str | None = typer.Argument(None, help="Benchmark to run (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List registered benchmarks."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: a smoke run, not a measurement."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed"),
    overrides: list[str] = SET_OPTION,
    out_dir: Path | None = typer.Option(None, "--out-dir",
                                        help="[default: $NASBENCH_RESULTS/bench, else results/bench]"),
) -> None:
    """Benchmarks compare us against a named peer in one run and report ratios."""
    from nasbench.bench.registry import BenchOptions, list_benchmarks, run_benchmark
    from nasbench.config.sections import default_results_root

    if list_ or name is None:
        for bench in list_benchmarks():
            print(f"{bench.name:<12} {bench.help}")
        if name is None and not list_:
            raise UserError("name a benchmark to run, or pass --list")
        return
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")
    params = {".".join(parts): value for parts, value in parse_overrides(overrides)}
    out_dir = default_results_root() / "bench" if out_dir is None else out_dir
    opts = BenchOptions(device=device, quick=quick, seed=seed, params=params, out_dir=out_dir)
    report, target = run_benchmark(name, opts)
    print(json.dumps(report["figures"], indent=2, default=str))
    print(f"wrote {target}")
