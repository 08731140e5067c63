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


RECIPES = {"mbv3": ("train_mbv3_digits.yaml", "search-supernet"),
           "resnet": ("train_resnet_mnist5k.yaml", "search-supernet-resnet")}
"""Per family: the example training recipe (tiny preset on a shipped dataset) and the run name
it is trained into under the bench's out_dir, shared by the benchmarks that search it."""


def trained_supernet(out_dir: Path, quick: bool, checkpoint: str | None = None,
                     family: str = "mbv3") -> Path:
    """A trained tiny supernet run: `checkpoint` if given, else one a previous bench trained
    under `out_dir` (a full one serves --quick too), else trained now (--quick: 5 steps)."""
    from nasbench.runners import train
    from nasbench.runners.config import resolve
    from nasbench.runs import load_run
    from nasbench_core.errors import RunError

    if checkpoint is not None:
        return Path(checkpoint)
    recipe, full = RECIPES[family]
    for name in [full] + ([f"{full}-quick"] if quick else []):
        path = Path(out_dir) / name
        try:
            if load_run(path).status == "completed":
                return path
        except RunError:
            pass
    overrides = [f"run.root={out_dir}", f"run.name={name}", "device=cpu"]
    if quick:
        overrides += ["train.epochs=1", "train.max_steps_per_epoch=5", "train.warmup_epochs=0"]
    cfg = resolve(train.TrainConfig, Path(__file__).parents[2] / "examples" / recipe,
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


def _quality_objectives(run_path: Path, bn_batches: int, out_dir: Path):
    """top1 and MACs of the trained supernet, cached on disk under the checkpoint and the
    calibration subset's id (a new subset never reuses values measured on another)."""
    import search
    from nasbench.data.fixed import FixedSubset
    from nasbench.runners.search import SearchConfig, load_supernet

    cfg = SearchConfig.model_validate({"supernet": {"run": str(run_path)}})
    net, data, info = load_supernet(cfg, "cpu")
    subset = FixedSubset.draw(data, bn_batches=bn_batches, val_batches=None, seed=0)
    calib, val = subset.loaders(data)
    ctx = search.ObjectiveContext(
        supernet=net, calib_loader=calib, val_loader=val, bn_batches=len(calib),
        input_shape=(data.in_chans, data.resolution, data.resolution),
    )
    cache = DiskCache(out_dir / "search-objective-cache.parquet",
                      key=f"{Path(run_path).resolve()}|calibration={subset.id}")
    objectives = [search.Objective(o.name, cache.wrap(o.name, net.space, o.fn), o.direction,
                                   o.unit, o.source)
                  for o in search.make_objectives(["top1", "macs"], ctx)]
    max_macs = objectives[1](net.space.largest())
    info.update(val_samples=len(data.val_dataset), calibration=subset.id)
    return net.space, objectives, max_macs, info, cache


def _trivial_objectives(space):
    from search import Objective

    def size(arch):
        return float(space.features(arch).sum())

    def quality(arch):
        f = space.features(arch)
        return float(1 - np.exp(-f[::2].sum() - 0.3 * f[1::2].sum()))

    return [Objective("top1", quality, "max"), Objective("macs", size, "min")]


def _search(name: str, space, objectives, budget: int, seed: int, settings: dict,
            journal_dir: Path | None = None):
    """(table, wall s, s inside objectives). With `journal_dir`, rows are journaled and the
    table compacted after every batch exactly as the search runner does, so the overhead
    includes durable appends."""
    import search
    from search.evaluations import EvaluationLog, write_table

    timed = [search.Objective(o.name, Timed(o.fn), o.direction, o.unit, o.source)
             for o in objectives]
    log = on_update = None
    if journal_dir is not None:
        table = journal_dir / f"{name}-{seed}.parquet"
        for stale in (table, journal_dir / f"{name}-{seed}.log.jsonl"):
            stale.unlink(missing_ok=True)
        log = EvaluationLog(journal_dir / f"{name}-{seed}.log.jsonl")

        def on_update(df):
            write_table(table, df, ev.metadata())
    ev = search.Evaluator(space, timed, budget=budget, seed=seed, log=log, on_update=on_update)
    t0 = time.perf_counter()
    if log is None:
        search.create_optimizer(name, **settings).run(search.SearchProblem(ev), seed=seed)
    else:
        with log:
            search.create_optimizer(name, **settings).run(search.SearchProblem(ev), seed=seed)
    wall = time.perf_counter() - t0
    return ev.df, wall, sum(o.fn.seconds for o in timed)


def _duplicate_share(space, df) -> float:
    """Share of the table's rows whose subnet (canonical arch) another row already holds."""
    distinct = {space.arch_id(space.parse(a)) for a in df["arch"]}
    return 1.0 - len(distinct) / max(len(df), 1)


def _against_reference(quality: dict[str, Any], budgets: list[int]) -> dict[str, Any]:
    """HV now minus HV in the checked-in reference JSON (measured before canonical archs)."""
    import json

    path = Path(__file__).parents[2] / "results/reference/bench/search.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())["figures"]["hypervolume"]
    return {name: {f"hv@{b}": round(quality[name][f"hv@{b}"]["mean"]
                                    - old[name][f"hv@{b}"]["mean"], 5)
                   for b in budgets if f"hv@{b}" in old.get(name, {})}
            for name in quality if name in old}


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

    run_path = trained_supernet(Path(opts.out_dir), opts.quick, s.checkpoint)
    out_dir = Path(opts.out_dir)
    space, objectives, max_macs, info, cache = _quality_objectives(run_path, 2, out_dir)
    dirs = {"top1": "max", "macs": "min"}
    ref = {"top1": 0.0, "macs": max_macs}
    raw: dict[str, dict[str, list[float]]] = {
        n: {**{f"hv@{b}": [] for b in budgets}, "best_top1": [], "evaluations": [],
            "wall_s": [], "overhead_ms_per_eval": [], "duplicate_share": []} for n in names}
    for seed in seeds:  # seed-major: an interrupted run still compares every optimizer
        for name in names:
            df, wall, objective_s = _search(name, space, objectives, max(budgets), seed,
                                            settings.get(name, {}))
            for b in budgets:
                raw[name][f"hv@{b}"].append(search.hypervolume(df.head(b), ref, dirs) / max_macs)
            raw[name]["best_top1"].append(float(df["top1"].max()))
            raw[name]["evaluations"].append(len(df))  # < budget: stalled on known archs
            raw[name]["duplicate_share"].append(_duplicate_share(space, df))
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

    goals = {"no_duplicate_evaluations": bool(all(
        share == 0 for name in names for share in raw[name]["duplicate_share"]))}
    for b in budgets:
        goals[f"linas>=nsga2@{b}"] = bool(mean("linas", b) >= mean("nsga2", b))
        goals[f"nsga2>=random@{b}"] = bool(mean("nsga2", b) >= mean("random", b))
        goals[f"nsga2>=optuna@{b}"] = bool(mean("nsga2", b) >= mean("optuna", b))
        goals[f"linas>=optuna@{b}"] = bool(mean("linas", b) >= mean("optuna", b))

    overhead: dict[str, Any] = {}
    trivial = _trivial_objectives(space)
    n = max(budgets)
    journals = out_dir / "search-journals"
    journals.mkdir(parents=True, exist_ok=True)
    for name in names:
        per_eval = []
        for seed in seeds[: s.overhead_seeds]:
            df, wall, objective_s = _search(name, space, trivial, n, seed,
                                            settings.get(name, {}), journal_dir=journals)
            per_eval.append((wall - objective_s) / len(df) * 1e3)
        overhead[name] = {"ms_per_eval": _stats(per_eval), "evaluations": n,
                          "goal_le_5ms": bool(np.mean(per_eval) <= 5.0)}

    return {
        "supernet": {**info, "run": str(run_path), "space_cardinality": space.cardinality},
        "objective": "top1 (BN recalibrated on 2 fixed, seeded, unaugmented train batches; all "
                     "val samples) vs MACs",
        "overhead_includes": "durable journal append per evaluation and Parquet compaction "
                             "per batch, as in the search runner",
        "reference_point": ref,
        "budgets": budgets,
        "seeds": seeds,
        "optimizer_settings": {n: settings.get(n, {}) for n in names},
        "optuna_default_sampler": "TPESampler (optuna's default for multi-objective studies)",
        "hypervolume": quality,
        "hv_change_vs_reference": _against_reference(quality, budgets),
        "goals": goals,
        "overhead": overhead,
    }
