"""`nasbench bench search`: optimizer quality (hypervolume) and per-evaluation search overhead.

Quality: top-1 (supernet, BN recalibrated on fixed batches, full digits val split) against MACs
on the tiny mbv3 supernet trained on digits by `examples/train_mbv3_digits.yaml` (trained here
into `<out_dir>/search-supernet` unless `--set checkpoint=PATH` names one). Every optimizer gets
the same budget of true evaluations per seed; the objective is deterministic and cached by
arch_id across runs, so optimizers differ only in which archs they ask for. Hypervolume is
normalised: reference point top1=0, MACs = MACs of the largest arch, divided by that box.
Overhead: the same optimizers on a trivial objective, wall time per evaluation minus the
objective's own time.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, OptimizerNames, benchmark

OPTIMIZERS = ["nsga2", "linas", "optuna", "random"]


class SearchSettings(BenchSettings):
    threads: PositiveInt = 1
    budgets: Annotated[list[PositiveInt], Field(min_length=1)] = [100, 200]
    seeds: PositiveInt = 3
    optimizers: OptimizerNames = list(OPTIMIZERS)
    checkpoint: str | None = None  # a trained run directory; None: trained (or reused) here
    overhead_seeds: PositiveInt = 1

    quick_defaults = {"budgets": [20, 40], "seeds": 2}


def _supernet_run(opts: BenchOptions) -> Path:
    """A trained tiny mbv3-on-digits run: given, cached from a previous bench, or trained now."""
    from nasbench.runners import train
    from nasbench.runners.config import resolve
    from nasbench.runs import load_run
    from nasbench_core.errors import RunError

    checkpoint = SearchSettings.of(opts).checkpoint
    if checkpoint is not None:
        return Path(checkpoint)
    for name in ["search-supernet"] + (["search-supernet-quick"] if opts.quick else []):
        path = Path(opts.out_dir) / name
        try:
            if load_run(path).status == "completed":
                return path
        except RunError:
            pass
    overrides = [f"run.root={opts.out_dir}", f"run.name={name}", "device=cpu"]
    if opts.quick:
        overrides += ["train.epochs=1", "train.max_steps_per_epoch=5", "train.warmup_epochs=0"]
    cfg = resolve(train.TrainConfig, Path(__file__).parents[2] / "examples/train_mbv3_digits.yaml",
                  cli_overrides=overrides)
    return train.run(cfg, resume=path if path.exists() else None).path


class Timed:
    """Wraps an objective fn and accumulates the time spent inside it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, arch):
        t0 = time.perf_counter()
        try:
            return self.fn(arch)
        finally:
            self.seconds += time.perf_counter() - t0


class DiskCache:
    """arch_id -> value for one objective of one checkpoint, kept in a Parquet file, so an
    interrupted or repeated benchmark never recomputes an evaluation (the objective is
    deterministic: fixed calibration and validation batches)."""

    def __init__(self, path: Path, key: str):
        import pandas as pd

        self.path, self.key = path, key
        self.values: dict[tuple[str, str], float] = {}
        if path.exists():
            df = pd.read_parquet(path)
            self.values = {(k, a): v for k, a, v in zip(df["key"], df["arch_id"], df["value"],
                                                        strict=True)}

    def wrap(self, name: str, space, fn):
        def cached(arch):
            k = (f"{self.key}|{name}", space.arch_id(arch))
            if k not in self.values:
                self.values[k] = float(fn(arch))
            return self.values[k]

        return cached

    def save(self) -> None:
        import pandas as pd

        from nasbench_core.atomic import atomic_path

        keys = list(self.values)
        df = pd.DataFrame({"key": [k for k, _ in keys], "arch_id": [a for _, a in keys],
                           "value": list(self.values.values())})
        with atomic_path(self.path) as tmp:
            df.to_parquet(tmp, index=False)


def _quality_objectives(run_path: Path, bn_batches: int, cache: DiskCache):
    import search
    from nasbench.runners.search import SearchConfig, load_supernet

    cfg = SearchConfig.model_validate({"supernet": {"run": str(run_path)}})
    net, data, info = load_supernet(cfg, "cpu")
    ctx = search.ObjectiveContext(
        supernet=net, calib_loader=list(islice(data.train_loader, bn_batches)),
        val_loader=list(data.val_loader), bn_batches=bn_batches,
        input_shape=(data.in_chans, data.resolution, data.resolution),
    )
    objectives = [search.Objective(o.name, cache.wrap(o.name, net.space, o.fn), o.direction,
                                   o.unit, o.source)
                  for o in search.make_objectives(["top1", "macs"], ctx)]
    max_macs = objectives[1](net.space.largest())
    info["val_samples"] = len(data.val_dataset)
    return net.space, objectives, max_macs, info


def _trivial_objectives(space):
    from search import Objective

    def size(arch):
        return float(space.features(arch).sum())

    def quality(arch):
        f = space.features(arch)
        return float(1 - np.exp(-f[::2].sum() - 0.3 * f[1::2].sum()))

    return [Objective("top1", quality, "max"), Objective("macs", size, "min")]


def _search(name: str, space, objectives, budget: int, seed: int, settings: dict):
    import search

    timed = [search.Objective(o.name, Timed(o.fn), o.direction, o.unit, o.source)
             for o in objectives]
    ev = search.Evaluator(space, timed, budget=budget, seed=seed)
    t0 = time.perf_counter()
    search.create_optimizer(name, **settings).run(search.SearchProblem(ev), seed=seed)
    wall = time.perf_counter() - t0
    return ev.df, wall, sum(o.fn.seconds for o in timed)


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": round(float(arr.mean()), 5), "std": round(std, 5),
            "per_seed": [round(float(v), 5) for v in arr]}


@benchmark("search", help="Hypervolume of NSGA-II, LINAS, optuna, random at 100/200 evals; "
           "search overhead per evaluation.", options=SearchSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    import search

    s = SearchSettings.of(opts)
    torch.set_num_threads(s.threads)
    budgets = s.budgets
    seeds = [opts.seed + i for i in range(s.seeds)]
    names = list(s.optimizers)
    settings = {"nsga2": {"pop_size": 20}, "linas": {"pop_size": 20}}

    import json

    from nasbench_core.atomic import atomic_write_text

    run_path = _supernet_run(opts)
    out_dir = Path(opts.out_dir)
    cache = DiskCache(out_dir / "search-objective-cache.parquet",
                      key=f"{Path(run_path).resolve()}|bn=2|val=all")
    space, objectives, max_macs, info = _quality_objectives(run_path, 2, cache)
    dirs = {"top1": "max", "macs": "min"}
    ref = {"top1": 0.0, "macs": max_macs}
    raw: dict[str, dict[str, list[float]]] = {
        n: {**{f"hv@{b}": [] for b in budgets}, "best_top1": [], "evaluations": [],
            "wall_s": [], "overhead_ms_per_eval": []} for n in names}
    for seed in seeds:  # seed-major: an interrupted run still compares every optimizer
        for name in names:
            df, wall, objective_s = _search(name, space, objectives, max(budgets), seed,
                                            settings.get(name, {}))
            for b in budgets:
                raw[name][f"hv@{b}"].append(search.hypervolume(df.head(b), ref, dirs) / max_macs)
            raw[name]["best_top1"].append(float(df["top1"].max()))
            raw[name]["evaluations"].append(len(df))  # < budget: stalled on known archs
            raw[name]["wall_s"].append(wall)
            raw[name]["overhead_ms_per_eval"].append((wall - objective_s) / len(df) * 1e3)
            cache.save()
            atomic_write_text(out_dir / "search.partial.json", json.dumps(raw, indent=1))
    quality: dict[str, Any] = {}
    for name in names:
        quality[name] = {k: _stats(v) for k, v in raw[name].items() if k != "wall_s"}
        quality[name]["wall_s_per_seed"] = round(float(np.mean(raw[name]["wall_s"])), 1)

    def mean(name: str, b: int) -> float:
        return quality[name][f"hv@{b}"]["mean"] if name in quality else float("nan")

    goals = {}
    for b in budgets:
        goals[f"linas>=nsga2@{b}"] = bool(mean("linas", b) >= mean("nsga2", b))
        goals[f"nsga2>=random@{b}"] = bool(mean("nsga2", b) >= mean("random", b))
        goals[f"nsga2>=optuna@{b}"] = bool(mean("nsga2", b) >= mean("optuna", b))
        goals[f"linas>=optuna@{b}"] = bool(mean("linas", b) >= mean("optuna", b))

    overhead: dict[str, Any] = {}
    trivial = _trivial_objectives(space)
    n = max(budgets)
    for name in names:
        per_eval = []
        for seed in seeds[: s.overhead_seeds]:
            df, wall, objective_s = _search(name, space, trivial, n, seed, settings.get(name, {}))
            per_eval.append((wall - objective_s) / len(df) * 1e3)
        overhead[name] = {"ms_per_eval": _stats(per_eval), "evaluations": n,
                          "goal_le_5ms": bool(np.mean(per_eval) <= 5.0)}

    return {
        "supernet": {**info, "run": str(run_path), "space_cardinality": space.cardinality},
        "objective": "top1 (BN recalibrated on 2 fixed train batches, all val samples) vs MACs",
        "reference_point": ref,
        "budgets": budgets,
        "seeds": seeds,
        "optimizer_settings": {n: settings.get(n, {}) for n in names},
        "optuna_default_sampler": "TPESampler (optuna's default for multi-objective studies)",
        "hypervolume": quality,
        "goals": goals,
        "overhead": overhead,
    }
