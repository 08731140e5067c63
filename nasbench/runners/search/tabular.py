"""`nasbench search` on a tabular benchmark (`benchmark: {name: builtin}`): the train-from-scratch
evaluation mode, where evaluating an arch is the benchmark's recorded training run of it.

The built-in table (or NAS-Bench-201, `name: nb201-cifar10` with `nb201: PATH`) holds every arch's
objectives and its learning curve (`top1_curve`, val top-1 after each epoch), so an evaluation
is a lookup and `early_stopping` can cut a run short: the arch's curve is revealed epoch by
epoch and, at the stopper's decision epochs, `search.early_stopping.CurveStopper` stops it when
P(its final top1 beats the best completed front point that costs no more) < `delta`.

A stopped arch's row has the top1 its curve reached, `epochs_trained` and `stopped_early=True`;
`search.feasible_mask` never counts it feasible, so it is on no front (`pareto.parquet`,
`nasbench results`, export picks), while the optimizer sees that partial top1 (an arch predicted
not to join the front, ranked below it). The stopping state is a pure function of the run's
own rows in their order, so a resume feeds the logged archs to a fresh stopper again, checks
each decision against its row, and continues exactly where the uninterrupted run would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from nasbench.config import StrictModel
from nasbench.errors import ConfigError, RunError
from nasbench.runners.search.table_writer import TableWriter, save_front
from nasbench.runs import Run

if TYPE_CHECKING:
    from nasbench.runners.search import SearchConfig

EPOCHS = "epochs_trained"


class BenchmarkSource(StrictModel):
    """A tabular benchmark to search instead of a supernet."""

    name: Literal["builtin", "nb201-cifar10", "nb201-cifar100", "nb201-ImageNet16-120"] = "builtin"
    table: Path | None = None
    """builtin: a regenerated table (`python -m nasbench.tabular.generate`); None: the shipped one."""
    nb201: Path | None = None
    """nb201-*: the NAS-Bench-201 .pth file."""


class EarlyStoppingSection(StrictModel):
    """`early_stopping`: learning-curve early stopping of train-from-scratch evaluations
    (`search.early_stopping.CurveStopper`); off (null) by default."""

    min_epochs: int = Field(default=3, ge=1, le=100_000)
    delta: float = Field(default=0.05, gt=0, lt=1)
    min_curves: int = Field(default=10, ge=2, le=1_000_000)
    """Complete curves before anything is stopped (the regressors' first fit)."""
    refit_every: int = Field(default=5, ge=1, le=1_000_000)
    """Refit the regressors after this many new complete curves."""


def check_benchmark_config(cfg: SearchConfig) -> None:
    """What a tabular search cannot take, refused in one line (a validator's ValueError)."""
    from nasbench.runners.search import SupernetSource

    if cfg.benchmark is None:
        if cfg.early_stopping is not None:
            raise ValueError("early_stopping needs the train-from-scratch evaluation mode "
                             "(benchmark: {name: builtin}); a supernet search has no learning curves")
        return
    if cfg.benchmark.name == "builtin" and cfg.benchmark.nb201 is not None:
        raise ValueError("benchmark.nb201 is for the nb201-* benchmarks, not builtin")
    if cfg.benchmark.name != "builtin" and cfg.benchmark.nb201 is None:
        raise ValueError(f"benchmark {cfg.benchmark.name} needs benchmark.nb201=PATH "
                         "(the NAS-Bench-201 .pth file)")
    unused = {"supernet": cfg.supernet != SupernetSource(family="mbv3"), "data": cfg.data is not None,
              "prune": cfg.prune is not None, "warm_start": bool(cfg.warm_start),
              "predictors": bool(cfg.predictors), "latency": bool(cfg.latency),
              "runner: ray": cfg.runner != "local"}
    clash = next((key for key, given in unused.items() if given), None)
    if clash is not None:
        raise ValueError(f"a tabular-benchmark search (benchmark) takes no {clash}")


def open_benchmark(source: BenchmarkSource, *, curves: bool):
    """The benchmark as a `TabularBenchmark` (NAS-Bench-201 tabulated, with its curves when asked)."""
    from nasbench.bench.optimizers import NB201
    from nasbench.tabular.builtin import load_builtin
    from nasbench.tabular.published import open_nasbench201

    if source.name == "builtin":
        return load_builtin(source.table)
    return open_nasbench201(source.nb201, dataset=NB201[source.name]).tabulate(curves=curves)


def stopping_run(bench, cfg: SearchConfig, objectives, constraints):
    """A `StoppingRun` over every arch of `bench` (rows in table order) with the config's
    stopper; the costs are the objectives other than top1, all minimised."""
    from search.early_stopping import CurveStopper, StoppingRun
    from search.problem import feasible_mask

    names = [o.name for o in objectives]
    wrong = [o.name for o in objectives if o.name != "top1" and o.direction != "min"]
    if "top1" not in names or wrong:
        raise ConfigError("early_stopping: the objectives must be top1 and costs to minimise"
                          + (f"; {wrong[0]} is maximised" if wrong else ""))
    curves = bench.curves()
    section = cfg.early_stopping
    if section.min_epochs >= curves.shape[1]:
        raise ConfigError(f"early_stopping.min_epochs must be below the benchmark's "
                          f"{curves.shape[1]} training epochs")
    stopper = CurveStopper(curves.shape[1], min_epochs=section.min_epochs, delta=section.delta,
                           min_curves=section.min_curves, refit_every=section.refit_every)
    features = np.vstack([bench.space.features(bench.space.parse(a)) for a in bench.table["arch"]])
    costs = bench.table[[n for n in names if n != "top1"]].to_numpy(dtype=float)
    return StoppingRun(curves, features, costs, stopper,
                       eligible=feasible_mask(bench.table, constraints))


class CurveBackend:
    """Evaluates archs on a tabular benchmark, one after another: each metric is the arch's
    table value and, with a `StoppingRun`, its training run may stop early (top1 is then where
    its curve stood, with `epochs_trained` and `stopped_early`)."""

    def __init__(self, bench, metrics, stopping=None) -> None:
        self.bench = bench
        self.metrics = list(metrics)
        self.stopping = stopping

    def row_of(self, arch_id: str) -> int:
        return int(self.bench.table.index.get_loc(arch_id))

    def measure(self, archs):
        from search.problem import STOPPED

        for index, arch in enumerate(archs):
            values: dict[str, Any] = {m.name: m(arch) for m in self.metrics}
            if self.stopping is not None:
                i = self.row_of(self.bench.space.arch_id(arch))
                epochs, complete = self.stopping.train(i)
                if not complete:
                    values["top1"] = float(self.stopping.curves[i, epochs - 1])
                values.update({EPOCHS: int(epochs), STOPPED: not complete})
            yield index, values


def _replay_log(backend: CurveBackend, rows) -> None:
    """Feed the resumed run's own rows, in order, to the fresh stopper: it ends in the state
    the uninterrupted run had; a row it decides differently (another table) is refused."""
    from search.problem import STOPPED

    for aid, epochs, stopped in zip(rows["arch_id"], rows[EPOCHS], rows[STOPPED], strict=True):
        got = backend.stopping.train(backend.row_of(aid))
        if got != (int(epochs), not bool(stopped)):
            raise RunError(f"resume: early stopping now decides {got[0]} epochs for arch {aid}, its "
                           f"logged row says {int(epochs)}; the benchmark table changed")


def _epochs_summary(df, horizon: int) -> dict[str, Any]:
    from search.problem import STOPPED

    spent, full = int(df[EPOCHS].sum()), horizon * len(df)
    return {"spent": spent, "all_trained": full, "saved_share": round(1 - spent / max(full, 1), 4),
            "stopped": int(df[STOPPED].sum()), "horizon": horizon}


def run(config: SearchConfig, resume: Path | None) -> Run:
    """`nasbench search` with `benchmark:` set (see the module docstring)."""
    import search
    from nasbench.progress import echo
    from nasbench.runners.search import _absolute_budget, _check_growth, _plot_axes, _save_plot
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from search.evaluations import (
        EvaluationLog,
        check_compatible,
        empty_table,
        log_path,
        read_table,
        write_table,
    )
    from search.problem import STOPPED

    config = config.model_copy(update={"budget": _absolute_budget(config.budget, resume)})
    stopping_on = config.early_stopping is not None
    bench = open_benchmark(config.benchmark, curves=stopping_on)
    known = [c for c in ("top1", "latency_ms", "macs", "params") if c in bench.table.columns]
    constraints = [search.parse_constraint(c, known) for c in config.constraints]
    objectives = bench.objectives(config.objectives)
    extra = bench.objectives(list(dict.fromkeys(c.column for c in constraints
                                                if c.column not in config.objectives)))
    optimizer = search.create_optimizer(config.optimizer.name, **config.optimizer.settings)
    stopping = stopping_run(bench, config, objectives, constraints) if stopping_on else None
    backend = CurveBackend(bench, [*objectives, *extra], stopping)
    device = f"benchmark:{bench.name}"
    provenance = {"benchmark": json.dumps(config.benchmark.model_dump(mode="json")),
                  "early_stopping": json.dumps(config.early_stopping and
                                               config.early_stopping.model_dump(mode="json"))}
    seed_everything(config.run.seed)

    metrics = [m.name for m in objectives + extra]
    resumed: list[Any] = []

    def check_resume(run: Run) -> None:
        """Before the run is reopened: its table measures what this search would, with the same
        benchmark and stopping settings, and the stopper re-decides its rows as logged."""
        path = run.path / "evaluations.parquet"
        if not path.exists():
            return
        table, meta = read_table(path)
        check_compatible(meta, space_fingerprint=bench.space.fingerprint(), device=device,
                         metrics=metrics)
        for key, value in provenance.items():
            if meta.get(key) != value:
                raise ConfigError(f"resume: this run's {key} was {meta.get(key)}, not {value}; "
                                  "start a new search run instead")
        if stopping_on:
            _replay_log(backend, table)
        resumed.append(table)

    grows = resume is not None and _check_growth(resume, config.budget)
    with start_run("search", config.model_dump(mode="json"), config.run.seed, root=config.run.root,
                   name=config.run.name, resume=resume, reopen_completed=grows,
                   check_resume=check_resume) as run:
        table_path = run.path / "evaluations.parquet"
        if resumed:  # with the journal rows its last compaction missed
            table = resumed[0]
        else:
            table = empty_table(metrics)
            if stopping_on:
                table = table.assign(**{EPOCHS: np.zeros(0, dtype=np.int64),
                                        STOPPED: np.zeros(0, dtype=bool)})
        done = len(table)
        run.update_manifest(benchmark=config.benchmark.model_dump(mode="json"),
                            space_fingerprint=bench.space.fingerprint())
        persist = TableWriter(table_path, config.budget, done)

        with EvaluationLog(log_path(table_path)) as journal:
            evaluator = search.Evaluator(bench.space, objectives, extra=extra, table=table,
                                         device=device, seed=config.run.seed,
                                         budget=max(0, config.budget - done), on_update=persist,
                                         log=journal, provenance=provenance, backend=backend)
            persist.evaluator = evaluator
            if not table_path.exists():  # the metadata is on disk before the journal's first row
                write_table(table_path, evaluator.df, evaluator.metadata())
            optimizer.run(search.SearchProblem(evaluator, constraints), seed=config.run.seed,
                          workdir=run.path)

        df, feasible, front = save_front(evaluator, constraints, table_path, run.path / "pareto.parquet")
        x, y = _plot_axes(objectives)
        _save_plot(df, evaluator.directions, x, y, feasible,
                   f"{config.optimizer.name} on {bench.name}, {len(df)} evaluations",
                   run.path / "pareto.png")
        summary: dict[str, Any] = {}
        if stopping_on:
            summary["epochs"] = _epochs_summary(df, stopping.horizon)
            e = summary["epochs"]
            echo(f"early stopping: {e['spent']} of {e['all_trained']} epochs "
                 f"({e['saved_share']:.1%} saved), {e['stopped']} archs stopped")
        run.update_manifest(evaluations=len(df), imported=0, pareto=len(front),
                            feasible=int(feasible.sum()), **summary)
        echo(f"{len(df)} evaluations, {len(front)} on the Pareto front -> {run.path}")
        return run
