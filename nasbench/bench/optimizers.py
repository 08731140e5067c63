"""`nasbench bench optimizers`: hypervolume against true evaluations for every registered
optimizer on the built-in tabular benchmark (every arch's objectives are a table lookup).

Two problems: top1 (max) x latency_ms (min) for every registered optimizer, and top1 x latency_ms
x params (min), where NSGA-III and AGE-MOEA are meant to shine, against NSGA-II and random. Every
optimizer gets the same stall limit (consecutive steps that find no new arch before it gives up;
optuna's TPE otherwise spends minutes re-suggesting archs it has on a 216-arch space).

Each optimizer runs once per seed with the largest budget; the hypervolume after b evaluations is
that of the first b rows of its evaluations table (the table records evaluations in order, and no
optimizer here looks at its total budget before it runs out). The reference point is the table's
nadir pushed out by 10% of each objective's range, and hypervolumes are divided by the exhaustive
table's, so 1.0 means the true front was found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from nasbench.bench.registry import BenchOptions, BenchSettings, OptimizerNames, benchmark, names_of

NB201 = {"nb201-cifar10": "cifar10", "nb201-cifar100": "cifar100",
         "nb201-ImageNet16-120": "ImageNet16-120"}
"""NAS-Bench-201 problems (top1 x latency_ms over its 15,625 archs), on the user's file
(`--set nb201=PATH`); cifar10's top1 is cifar10-valid's validation accuracy."""
PROBLEMS: dict[str, list[str]] = {
    "top1-latency": ["top1", "latency_ms"],
    "top1-latency-params": ["top1", "latency_ms", "params"],
    **{name: ["top1", "latency_ms"] for name in NB201},
}
# Optimizers per problem; None = every registered optimizer.
PROBLEM_OPTIMIZERS: dict[str, list[str] | None] = {
    "top1-latency": None,
    "top1-latency-params": ["nsga2", "nsga3", "agemoea", "random"],
    **{name: None for name in NB201},
}
DEFAULT_PROBLEMS = ["top1-latency", "top1-latency-params"]
MAX_STALL = 50
REF_MARGIN = 0.1
CURVE_STEP = 5


def require_nb201_file(problems: Sequence[str], nb201: str | None) -> None:
    """An nb201-* problem without `nb201=PATH` is refused (a settings validator's ValueError)."""
    wanted = [p for p in problems if p in NB201]
    if wanted and nb201 is None:
        raise ValueError(f"problem {wanted[0]} needs nb201=PATH (the NAS-Bench-201 .pth file)")


def _nb201(path: str | None, dataset: str):
    """The user's NAS-Bench-201 file for `dataset`, every arch queried once."""
    from nasbench.tabular.published import open_nasbench201

    return open_nasbench201(path, dataset=dataset).tabulate()


def reference_point(bench, names: Sequence[str], margin: float = REF_MARGIN) -> dict[str, float]:
    """Nadir of the whole table, pushed out by `margin` of each objective's range, so every
    arch on the true front (including its extremes) adds volume."""
    from nasbench.tabular.builtin import OBJECTIVE_DIRECTIONS

    ref = {}
    for name in names:
        col = bench.table[name].to_numpy(dtype=float)
        span = float(col.max() - col.min())
        ref[name] = (float(col.min()) - margin * span if OBJECTIVE_DIRECTIONS[name] == "max"
                     else float(col.max()) + margin * span)
    return ref


def search_once(bench, names: Sequence[str], optimizer: str, budget: int, seed: int,
                settings: dict[str, Any] | None = None, max_stall: int = MAX_STALL):
    """The evaluations table (in evaluation order) of one seeded run on the lookup objectives."""
    import search

    evaluator = search.Evaluator(bench.space, bench.objectives(list(names)), budget=budget,
                                 seed=seed)
    opt = search.create_optimizer(optimizer, **(settings or {}))
    opt.max_stall = min(opt.max_stall, max_stall)
    opt.run(search.SearchProblem(evaluator), seed=seed)
    return evaluator.df


def hv_curve(df, directions: dict[str, str], ref: dict[str, float], true_hv: float,
             steps: Sequence[int]) -> list[float]:
    """Normalised hypervolume of the first n evaluations, for each n in `steps`."""
    from search import hypervolume

    return [hypervolume(df.head(n), ref, directions) / true_hv for n in steps]


def compare(bench, names: Sequence[str], optimizers: Sequence[str], seeds: Sequence[int],
            budgets: Sequence[int], settings: dict[str, dict] | None = None,
            max_stall: int = MAX_STALL) -> dict[str, Any]:
    """Per optimizer: normalised HV at each budget (mean, std, per seed) and the full curve."""
    from nasbench.tabular.builtin import OBJECTIVE_DIRECTIONS
    from search import hypervolume

    directions = {n: OBJECTIVE_DIRECTIONS[n] for n in names}
    ref = reference_point(bench, names)
    true_hv = hypervolume(bench.table, ref, directions)
    top = max(budgets)
    steps = sorted(set(range(CURVE_STEP, top + 1, CURVE_STEP)) | set(budgets))
    results: dict[str, Any] = {}
    for name in optimizers:
        curves, walls, counts = [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            df = search_once(bench, names, name, top, seed, (settings or {}).get(name), max_stall)
            walls.append(time.perf_counter() - t0)
            counts.append(len(df))
            curves.append(hv_curve(df, directions, ref, true_hv, steps))
        arr = np.asarray(curves)
        results[name] = {
            **{f"hv@{b}": _stats(arr[:, steps.index(b)]) for b in budgets},
            "evaluations": counts,
            "wall_s_per_seed": round(float(np.mean(walls)), 3),
            "curve": {"evaluations": steps, "mean": _round(arr.mean(axis=0)),
                      "std": _round(_std(arr))},
        }
    return {"objectives": directions, "reference_point": ref, "true_front_hv": true_hv,
            "true_front_size": int(_front_size(bench, directions)), "optimizers": results}


def _front_size(bench, directions: dict[str, str]) -> int:
    from search import pareto_mask

    return int(pareto_mask(bench.table, directions).sum())


def _std(arr: np.ndarray) -> np.ndarray:
    return arr.std(axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1])


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]


def _stats(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": round(float(values.mean()), 5), "std": round(std, 5),
            "per_seed": _round(values)}


def plot(problems: dict[str, Any], path: Path) -> None:
    """One panel per problem: mean normalised HV against evaluations, ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasbench_core.atomic import atomic_path

    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.5), dpi=110,
                             squeeze=False)
    names = sorted({n for r in problems.values() for n in r["optimizers"]})
    for ax, (title, result) in zip(axes[0], problems.items(), strict=True):
        for name, res in result["optimizers"].items():
            x = np.asarray(res["curve"]["evaluations"])
            mean, std = np.asarray(res["curve"]["mean"]), np.asarray(res["curve"]["std"])
            color = f"C{names.index(name) % 10}"  # same colour for an optimizer in every panel
            ax.plot(x, mean, color=color, label=name)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(f"{title} ({len(result['objectives'])} objectives)")
        ax.set_xlabel("true evaluations")
        ax.set_ylabel("hypervolume / exhaustive table's")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


class OptimizersSettings(BenchSettings):
    table: str | None = None  # a tabular benchmark's Parquet file; None: the shipped table
    budgets: Annotated[list[PositiveInt], Field(min_length=1)] = [30, 60, 100]
    seeds: PositiveInt = 5
    optimizers: OptimizerNames | None = None  # None: PROBLEM_OPTIMIZERS
    problems: names_of(tuple(PROBLEMS), "problem") = DEFAULT_PROBLEMS
    max_stall: PositiveInt = MAX_STALL
    nb201: str | None = None  # the NAS-Bench-201 .pth file, for the nb201-* problems

    @model_validator(mode="after")
    def _nb201_file(self) -> OptimizersSettings:
        require_nb201_file(self.problems, self.nb201)
        return self

    quick_defaults = {"budgets": [20, 40], "seeds": 2}


@benchmark("optimizers", help="Hypervolume vs evaluations of every registered optimizer on the "
           "built-in tabular benchmark (2 and 3 objectives), mean ± std over seeds.",
           options=OptimizersSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import search
    from nasbench.tabular.builtin import load_builtin, table_path

    s = OptimizersSettings.of(opts)
    table, budgets, max_stall = s.table, s.budgets, s.max_stall
    builtin = load_builtin(table)
    benches = {p: _nb201(s.nb201, NB201[p]) for p in s.problems if p in NB201}  # fail before work
    seeds = [opts.seed + i for i in range(s.seeds)]
    started = time.perf_counter()
    results = {}
    for problem in s.problems:
        names = list(s.optimizers or PROBLEM_OPTIMIZERS[problem] or search.list_optimizers())
        results[problem] = compare(benches.get(problem, builtin), PROBLEMS[problem], names, seeds,
                                   budgets, max_stall=max_stall)
    wall = time.perf_counter() - started
    target = Path(opts.out_dir) / "optimizers.png"
    plot(results, target)
    return {
        "table": {"path": str(table or table_path()), "archs": len(builtin.table),
                  **{k: v for k, v in builtin.metadata.items() if k != "space"}},
        **({"nb201": {"path": s.nb201, **{p: len(b.table) for p, b in benches.items()}}}
           if benches else {}),
        "budgets": budgets,
        "seeds": seeds,
        "optimizer_settings": "registry defaults (search.create_optimizer(name))",
        "max_stall": max_stall,
        "reference_point_rule": f"table nadir + {REF_MARGIN:g} x range per objective",
        "normalisation": "HV / HV of the exhaustive table (1.0 = true front found)",
        "problems": results,
        "search_wall_s": round(wall, 2),
        "plot": str(target),
    }
