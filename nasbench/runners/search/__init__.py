"""The search runner: multi-objective search over a supernet, written to a run.

The run gets `evaluations.log.jsonl` (every evaluation appended and fsynced as it finishes),
`evaluations.parquet` (compacted from the evaluator's rows atomically after every batch; readers
add the journal rows it lacks, so a killed search loses at most the evaluation in flight and
resumes without re-measuring anything), `pareto.parquet` and `pareto.png`. The supernet comes
from a train run (or a checkpoint); an untrained supernet (`supernet: {family, preset}`) is
allowed to try the pipeline and labelled as such. With `benchmark:` the search runs on a tabular
benchmark instead (train-from-scratch evaluation, optional `early_stopping`):
`nasbench.runners.search.tabular`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.config.loader import RELATIVE
from nasbench.config.sections import MAX_BUDGET
from nasbench.data.fixed import FixedSubset
from nasbench.errors import ConfigError, RunError
from nasbench.runners.search.table_writer import TableWriter, save_front
from nasbench.runners.search.tabular import BenchmarkSource, EarlyStoppingSection, check_benchmark_config
from nasbench.runs import Run


class SupernetSource(StrictModel):
    """Either `run` (a train run dir, its checkpoints dir, or a checkpoint) or `family`."""

    run: Path | None = None
    family: str | None = None
    preset: str = "tiny"
    width_mult: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> SupernetSource:
        if (self.run is None) == (self.family is None):
            raise ValueError("give exactly one of supernet.run (trained) or supernet.family")
        return self


class EvaluationConfig(StrictModel):
    """How true evaluations are done: device, BN recalibration and validation subset sizes."""

    device: str = "cpu"
    bn_batches: int = Field(default=4, ge=1, le=10_000)
    val_batches: int | None = Field(default=None, ge=1, le=10**6)


class OptimizerConfig(StrictModel):
    name: str = "nsga2"
    settings: dict[str, Any] = Field(default_factory=dict)


class RaySearchSection(StrictModel):
    """`runner: ray`: evaluation workers on a Ray cluster — the one at `address`, else the
    `nasbench cluster up` cluster when one runs, else a Ray started in this process."""

    address: str | None = None
    num_workers: int = Field(default=2, ge=1, le=1024)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    resources: dict[str, float] = Field(default_factory=dict)
    max_retries: int = Field(default=1, ge=0, le=100)
    node_workers: int = Field(default=1, ge=1, le=1024)
    """Workers per node label, for metrics placed on nodes (`latency_ms@node:LABEL`)."""


class JointPruneSection(StrictModel):
    """`prune`: search architecture and sparsity together (`search.joint`): each arch also
    picks one of `sparsity`, and its subnet is pruned by `method` before it is measured."""

    kind: str = "unstructured"
    method: str = "global_magnitude"
    sparsity: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.8], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> JointPruneSection:
        from search.joint import check_method

        check_method(self.kind, self.method, self.sparsity, self.options)
        return self


class SearchConfig(StrictModel):
    supernet: SupernetSource = Field(default_factory=lambda: SupernetSource(family="mbv3"))
    data: DataConfig | None = None
    objectives: list[str] = Field(default_factory=lambda: ["top1", "macs"], min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    budget: int | str = 100
    """True evaluations in the table at the end; `+N` means N more than the resumed run has
    (N on a new run)."""
    constraints: list[str] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    latency: dict[str, Any] = Field(default_factory=dict)
    predictors: dict[str, Path] = Field(default_factory=dict)
    prune: JointPruneSection | None = None
    warm_start: list[Path] = Field(default_factory=list)
    """Earlier search runs whose evaluations seed this one (see `search.warm_start`)."""
    run: RunConfig = Field(default_factory=RunConfig)
    runner: Literal["local", "ray"] = "local"
    ray: RaySearchSection = Field(default_factory=RaySearchSection)
    benchmark: BenchmarkSource | None = None
    """Search a tabular benchmark instead of the supernet: train-from-scratch evaluation, each
    arch's recorded training run (`nasbench.runners.search.tabular`)."""
    early_stopping: EarlyStoppingSection | None = None
    """Learning-curve early stopping of those runs (benchmark mode only); off by default."""

    @model_validator(mode="after")
    def _evaluation_mode(self) -> SearchConfig:
        check_benchmark_config(self)
        return self

    @field_validator("latency")
    @classmethod
    def _latency(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_latency_settings(value)

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: int | str) -> int | str:
        relative = isinstance(value, str) and RELATIVE.match(value.strip())
        try:
            number = int(value.strip()[1:] if relative else value)
        except ValueError:
            raise ValueError("expected a positive integer, or +N for N more evaluations") from None
        if not (0 if relative else 1) <= number <= MAX_BUDGET:  # +0 is refused where it is known
            raise ValueError(f"expected an integer from 1 to {MAX_BUDGET}")
        return value.strip() if relative else number


def check_latency_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`latency:` of a search, how its latency objectives are timed: the settings of
    `LatencySettings` but `device` (evaluation.device's, or a placement's), each typed and
    bounded as `latency measure` takes it; returned with the values coerced."""
    import dataclasses

    import pydantic

    from nasbench.runners.latency import MeasureSection
    from search.latency import LatencySettings

    known = [f.name for f in dataclasses.fields(LatencySettings) if f.name != "device"]
    bad = [key for key in settings if key not in known]
    if bad:
        raise ValueError(f"unknown setting {str(bad[0])[:40]!r}; allowed: {', '.join(known)}")
    try:
        checked = MeasureSection.model_validate(settings)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0])
        raise ValueError(f"{key}={settings.get(key)!r}: {first['msg']}") from None
    return {key: getattr(checked, key) for key in settings}


def load_supernet(cfg: SearchConfig, device: str):
    """(net, data bundle, description) for a search config's supernet and data: what search,
    export and the benchmarks all evaluate, so they see the same net on the same data."""
    import torch

    import supernets
    from nasbench.data import load_dataset
    from nasbench.runs import load_run
    from supernets.checkpoint import load_supernet

    source = cfg.supernet
    data_cfg = cfg.data
    mode = "tensor"  # how archs meet their resolution: as the supernet was trained
    if source.run is not None:
        path = source.run
        if (path / "manifest.json").exists():
            train_run = load_run(path)
            if data_cfg is None and "data" in train_run.manifest.get("config", {}):
                data_cfg = DataConfig.model_validate(train_run.manifest["config"]["data"])
            path = train_run.path / "checkpoints"
        net, meta = load_supernet(path, device=device)
        mode = str(meta.get("hparams", {}).get("resolution_mode", "tensor"))
        info = {"trained": True, "checkpoint": str(path), "epoch": meta.get("epoch")}
    data_cfg = data_cfg or DataConfig()
    data = load_dataset(data_cfg, seed=cfg.run.seed)
    if source.family is not None:  # untrained: its weights are a function of the run's seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed)
            net = supernets.create(source.family, preset=source.preset,
                                   width_mult=source.width_mult, num_classes=data.num_classes,
                                   in_chans=data.in_chans).to(device)
        info = {"trained": False, "family": source.family, "preset": source.preset}
    if data_cfg.resolution is None and "resolution" in net.space:
        # As in training: feed the largest resolution, smaller archs downsample it.
        largest = int(net.space.largest()["resolution"])
        data = load_dataset(data_cfg.model_copy(update={"resolution": largest}),
                            seed=cfg.run.seed)
    if mode == "data" and "resolution" in net.space:  # archs measured on data loaded at their size
        data = data.with_resolution_mode(mode)
        info = {**info, "resolution_mode": mode}
    if cfg.prune is not None:  # joint architecture x sparsity: its archs are pruned subnets
        from search.joint import PrunedSubnets

        p = cfg.prune
        net = PrunedSubnets(net, kind=p.kind, method=p.method, sparsities=p.sparsity,
                            options=p.options)
        info = {**info, "prune": p.model_dump(mode="json")}
    return net, data, info


def run(config: SearchConfig, *, resume: Path | None = None) -> Run:
    """Search `config.supernet` (or the tabular `config.benchmark`) for `config.budget` true
    evaluations; `resume` continues the run in that directory without re-measuring what its
    table already holds."""
    if config.benchmark is not None:
        from nasbench.runners.search import tabular

        return tabular.run(config, resume)
    if config.runner == "local":
        return _run(config, resume)
    from nasbench.distributed.train import ray_session

    with ray_session(config.ray.address):  # open first: node-placed metrics ask their nodes
        _check_capacity(config)
        return _run(config, resume)


def _run(config: SearchConfig, resume: Path | None) -> Run:
    import search
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from search.evaluations import (
        EvaluationLog,
        log_path,
        read_table,
        write_table,
    )
    from search.warm_start import own_rows

    config = config.model_copy(update={"budget": _absolute_budget(config.budget, resume)})
    for name in config.objectives:
        search.objectives.objective_kind(name)
    constraints = [search.parse_constraint(c, search.list_objectives()) for c in config.constraints]
    optimizer = search.create_optimizer(config.optimizer.name, **config.optimizer.settings)
    keys = _device_keys(config, [*config.objectives, *(c.column for c in constraints),
                                 *config.predictors])
    device = _table_device(config, keys)
    seed_everything(config.run.seed)
    net, data, info = load_supernet(config, config.evaluation.device)
    if not info["trained"]:
        echo(f"warning: searching an UNTRAINED {info['family']} supernet (preset "
             f"{info['preset']}): accuracies only exercise the pipeline")
    predictors = _load_predictors(config, net, keys, _shape(data))
    drawn = FixedSubset.draw(data, bn_batches=config.evaluation.bn_batches,
                             val_batches=config.evaluation.val_batches, seed=config.run.seed)
    metric_names = list(dict.fromkeys(config.objectives + [c.column for c in constraints]))
    warm = _warm_start_sources(config, net.space.fingerprint(), device, drawn.id, info, metric_names)

    grows = resume is not None and _check_growth(resume, config.budget)
    def check_resume(run: Run) -> None:
        _check_resumable(run, drawn, space_fingerprint=net.space.fingerprint(), device=device,
                         metrics=metric_names)

    with start_run("search", config.model_dump(mode="json"), config.run.seed, root=config.run.root,
                   name=config.run.name, resume=resume, reopen_completed=grows,
                   check_resume=check_resume) as run:
        subset = FixedSubset.for_run(run.path, data, bn_batches=config.evaluation.bn_batches,
                                     val_batches=config.evaluation.val_batches,
                                     seed=config.run.seed)
        objectives, extra = _objectives(config, constraints, net, data, subset, predictors)
        table_path = run.path / "evaluations.parquet"
        table = None
        if table_path.exists():  # with the journal rows its last compaction missed
            table, _ = read_table(table_path)  # checked by check_resume
        table = _with_imported(table, warm, metric_names)
        done = own_rows(table)
        run.update_manifest(supernet=info, space_fingerprint=net.space.fingerprint())

        persist = TableWriter(table_path, config.budget, done)

        journal = EvaluationLog(log_path(table_path))
        with journal, _backend(config, subset, keys, [m.name for m in objectives + extra]) as backend:
            evaluator = search.Evaluator(net.space, objectives, extra=extra, table=table,
                                         device=device, seed=config.run.seed,
                                         budget=max(0, config.budget - done), on_update=persist,
                                         log=journal, provenance=_provenance(subset, keys),
                                         backend=backend)
            persist.evaluator = evaluator
            if not table_path.exists() or len(evaluator.df) > done:
                # the metadata (and imported rows) are on disk before the journal's first row
                write_table(table_path, evaluator.df, evaluator.metadata())
            if backend is not None:
                run.update_manifest(ray_workers=backend.describe())
            scorer = None
            if getattr(optimizer, "zc_warm_start", None) is not None or getattr(
                    optimizer, "zc_features", None):  # proxies rank a pool / feed the predictors
                scorer = search.zero_cost.ArchScorer.for_supernet(
                    net, subset.calib_batches(data), device=config.evaluation.device)
            problem = search.SearchProblem(evaluator, constraints, zero_cost=scorer)
            optimizer.run(problem, seed=config.run.seed, workdir=run.path)

        df, feasible, front = save_front(evaluator, constraints, table_path, run.path / "pareto.parquet")
        x, y = _plot_axes(objectives)
        title = f"{config.optimizer.name}, {len(df)} evaluations"
        if not info["trained"]:
            title += " (UNTRAINED supernet)"
        _save_plot(df, evaluator.directions, x, y, feasible, title, run.path / "pareto.png")
        if keys:  # latency was timed or predicted: how busy the machine was, start and end
            from search.latency.device import machine_state

            run.update_manifest(machine_state={"start": json.loads(evaluator.provenance["machine_state"]),
                                               "end": machine_state()})
        run.update_manifest(evaluations=own_rows(df), imported=len(df) - own_rows(df),
                            pareto=len(front), feasible=int(feasible.sum()))
        echo(f"{len(df)} evaluations, {len(front)} on the Pareto front -> {run.path}")
        return run


def _check_resumable(run: Run, drawn: FixedSubset, *, space_fingerprint: str, device: str,
                     metrics: list[str]) -> None:
    """What a resume reads, checked before the run is reopened: calibration.json holds the
    samples this config draws, and evaluations.parquet (with its journal) is readable and
    measures what this search would."""
    from nasbench.data.fixed import FILE
    from search.evaluations import check_compatible, read_table

    if (run.path / FILE).exists():
        drawn = FixedSubset.stored_as(run.path, drawn)
    table = run.path / "evaluations.parquet"
    if table.exists():
        check_compatible(read_table(table)[1], space_fingerprint=space_fingerprint, device=device,
                         metrics=metrics, calibration=drawn.id)


def _objectives(config: SearchConfig, constraints, net, data, subset, predictors):
    """(objectives, extra metrics measured only for constraints); accuracy is measured on the
    run's fixed subset, so an arch's top1 does not depend on what was evaluated before it."""
    import search

    calib, val = subset.loaders(data)
    if hasattr(net, "calibration"):  # a joint search's pruners (layer_dp) see the fixed batches
        net.calibration = calib
    ctx = search.ObjectiveContext(
        supernet=net, calib_loader=calib, val_loader=val, device=config.evaluation.device,
        bn_batches=len(calib), val_batches=None,
        input_shape=(data.in_chans, data.resolution, data.resolution), latency=config.latency,
        predictors=predictors,
    )
    objectives = search.make_objectives(config.objectives, ctx)
    extra_names = [c.column for c in constraints if c.column not in config.objectives]
    return objectives, search.make_objectives(list(dict.fromkeys(extra_names)), ctx)


@contextlib.contextmanager
def _backend(config: SearchConfig, subset: FixedSubset, keys: dict[str, str],
             metrics: list[str]) -> Iterator[Any]:
    """None (evaluate in this process) or a `RayBackend`: one pool of workers for the metrics
    measured anywhere, and one per node label for the metrics placed on those nodes. Each
    worker builds the supernet and its metrics once, from this config and the run's fixed
    subset, for the whole search."""
    if config.runner == "local":
        yield None
        return
    from functools import partial

    from nasbench.distributed.evaluate import MetricsPool, RayBackend
    from nasbench.progress import echo
    from search.placement import node_of

    section = config.ray
    groups: dict[str | None, list[str]] = {}
    for name in metrics:
        groups.setdefault(node_of(name), []).append(name)
    with contextlib.ExitStack() as stack:
        pools = []
        for node, names in groups.items():
            make = partial(worker_metrics, config.model_dump(mode="json"), subset, keys, names)
            resources = section.resources if node is None else {node: NODE_SHARE}
            pools.append(stack.enter_context(MetricsPool(
                make, num_actors=section.num_workers if node is None else section.node_workers,
                max_retries=section.max_retries, num_cpus=section.cpus_per_worker,
                resources=resources)))
            echo(f"evaluating {', '.join(names)} on {pools[-1].size} Ray workers"
                 + ("" if node is None else f" on nodes with {node!r}"))
        yield RayBackend(pools)


NODE_SHARE = 0.001
"""How much of a node label's resource each worker takes: any node that has it qualifies."""


def worker_metrics(config: dict, subset: FixedSubset, keys: dict[str, str],
                   names: list[str]) -> dict[str, Any]:
    """What a Ray worker measures with: the metrics `names` of the search, built from the same
    config, seed and fixed subset as in the driver (so values are identical)."""
    import search

    cfg = SearchConfig.model_validate(config)
    constraints = [search.parse_constraint(c, search.list_objectives()) for c in cfg.constraints]
    net, data, _ = load_supernet(cfg, cfg.evaluation.device)
    objectives, extra = _objectives(cfg, constraints, net, data, subset,
                                    _load_predictors(cfg, net, keys, _shape(data)))
    return {m.name: m for m in [*objectives, *extra] if m.name in names}


def _check_capacity(config: SearchConfig) -> None:
    """Workers that can never be placed would wait forever: refuse them in one line."""
    import ray

    from search.placement import node_of

    section = config.ray
    have = ray.cluster_resources()
    need = {"CPU": section.num_workers * section.cpus_per_worker,
            **{k: section.num_workers * v for k, v in section.resources.items()}}
    for name, amount in need.items():
        if have.get(name, 0.0) < amount:
            raise ConfigError(f"ray: {section.num_workers} workers need {amount:g} {name}; the "
                              f"cluster has {have.get(name, 0.0):g}")
    for column in [*config.objectives, *config.predictors]:
        node = node_of(column)
        if node is not None and have.get(node, 0.0) <= 0:
            raise ConfigError(f"objective {column}: no node of the Ray cluster offers resource "
                              f"{node!r} (ray start --resources='{{\"{node}\": 1}}')")


def _warm_start_sources(config: SearchConfig, space_fingerprint: str, device: str,
                        calibration: str, supernet: dict, metrics: list[str]) -> list[Any]:
    """The `warm_start` runs' tables, each checked to measure what this search would (before
    any run directory is touched)."""
    from nasbench.runs import load_run
    from search.evaluations import read_table
    from search.warm_start import SourceTable, check_source

    sources = []
    for path in config.warm_start:
        earlier = load_run(path)
        if earlier.manifest.get("command") != "search":
            raise RunError(f"search.warm_start: {earlier.path} is a "
                           f"`{earlier.manifest.get('command')}` run, not a search")
        rows, meta = read_table(earlier.path / "evaluations.parquet")
        source = SourceTable(str(earlier.path), rows, meta, earlier.manifest.get("supernet", {}))
        check_source(source, space_fingerprint=space_fingerprint, device=device,
                     calibration=calibration, supernet=supernet, metrics=metrics)
        sources.append(source)
    return sources


def _with_imported(table, sources: list[Any], metrics: list[str]) -> Any:
    """`table` (None for a new run) plus the warm-start rows it lacks, in its schema."""
    import pandas as pd

    from search.evaluations import empty_table, table_dtypes
    from search.warm_start import imported_rows

    imported = imported_rows(sources, have=table)
    if imported is None:
        return table
    base = empty_table(metrics) if table is None else table
    imported = table_dtypes(imported.reindex(columns=base.columns))
    return pd.concat([base, imported], ignore_index=True) if len(base) else imported


def _provenance(subset: FixedSubset, keys: dict[str, str]) -> dict[str, str]:
    """Table metadata beyond the metrics: the calibration subset's id and, when latency is in
    the table, the load average and CPU clock as the search began (`machine_state`)."""
    from search.latency.device import machine_state

    out = {"calibration": subset.id}
    if keys:
        out["machine_state"] = json.dumps(machine_state())
    return out


def _absolute_budget(budget: int | str, resume: Path | None) -> int:
    """`+N` is N more than the resumed run measured itself (N for a new run)."""
    if isinstance(budget, int):
        return budget
    extra = int(budget[1:])
    if extra < 1:
        raise ConfigError(f"budget {budget}: add at least one evaluation")
    table = None if resume is None else Path(resume) / "evaluations.parquet"
    if table is None or not table.exists():
        return extra
    from search.evaluations import read_table
    from search.warm_start import own_rows

    return own_rows(read_table(table)[0]) + extra


def _check_growth(path: Path, budget: int) -> bool:
    """True when `path` is a completed search that `budget` extends; a completed run with no
    budget left is a one-line error instead of a no-op."""
    from nasbench.runs import load_run

    previous = load_run(path)
    if previous.status != "completed":
        return False
    done = int(previous.manifest.get("evaluations", 0))
    if budget <= done:
        raise RunError(f"run {previous.path} already completed with {done} evaluations; "
                       f"set a budget above {done} to extend it")
    return True


def _save_plot(df, directions: dict[str, str], x: str, y: str, feasible, title: str, path: Path) -> None:
    """pareto.png, drawn on a bare Figure: no pyplot state, so a notebook's backend is untouched."""
    from matplotlib.figure import Figure

    import search
    from nasbench_core.atomic import atomic_path

    ax = Figure(figsize=(6, 4.5)).add_subplot()
    search.plot_front(df, {x: directions[x], y: directions[y]}, ax, x=x, y=y, feasible=feasible, title=title)
    with atomic_path(path) as tmp:
        ax.figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _plot_axes(objectives) -> tuple[str, str]:
    """Cost on x, quality on y when there is one of each; else the first two objectives."""
    names = [o.name for o in objectives]
    if len(names) == 1:
        return names[0], names[0]
    maxs = [o.name for o in objectives if o.direction == "max"]
    mins = [o.name for o in objectives if o.direction == "min"]
    if maxs and mins:
        return mins[0], maxs[0]
    return names[0], names[1]


def _device_keys(cfg: SearchConfig, columns: list[str]) -> dict[str, str]:
    """The latency device key (hardware, backend, batch, threads) of each latency column, read
    where it is measured: this machine, or a node of the Ray cluster with that label."""

    from search.placement import PLACEABLE, split

    keys: dict[str, str] = {}  # `latency:` was checked with the config (check_latency_settings)
    for column in dict.fromkeys(columns):
        base, placement = split(column)
        if base not in PLACEABLE:
            continue
        device = cfg.evaluation.device if placement is None else placement.device
        settings = {**cfg.latency, "device": device}
        if placement is not None and placement.node is not None:
            if cfg.runner != "ray":
                raise ConfigError(f"objective {column} is measured on Ray nodes with resource "
                                  f"{placement.node!r}: set runner=ray")
            keys[column] = _node_device_key(placement.node, settings)
        else:
            keys[column] = latency_device_key(settings)
    return keys


def latency_device_key(settings: dict[str, Any]) -> str:
    """The device key of `LatencySettings(**settings)` on the machine this runs on."""
    from search.latency import LatencySettings

    return LatencySettings(**settings).resolve().device_info().key


def _node_device_key(node: str, settings: dict[str, Any], timeout: float = 120.0) -> str:
    import ray

    task = ray.remote(num_cpus=0, resources={node: NODE_SHARE})(latency_device_key)
    ref = task.remote(settings)
    ready, _ = ray.wait([ref], timeout=timeout)
    if not ready:
        ray.cancel(ref, force=True)
        raise ConfigError(f"no Ray node with resource {node!r} answered within {timeout:.0f} s")
    return ray.get(ref)


def _table_device(cfg: SearchConfig, keys: dict[str, str]) -> str:
    """The table's `device`: the evaluation device without latency; the latency device key
    when every latency column has the same one (unplaced); else `column=key` pairs, so tables
    and predictors of other devices are refused."""
    if not keys:
        return cfg.evaluation.device
    if all("@" not in c for c in keys) and len(set(keys.values())) == 1:
        return next(iter(keys.values()))
    return ";".join(f"{column}={key}" for column, key in sorted(keys.items()))


def _shape(data) -> tuple[int, int, int]:
    return (data.in_chans, data.resolution, data.resolution)


def _load_predictors(cfg: SearchConfig, net, keys: dict[str, str], input_shape=None) -> dict[str, Any]:
    """Fitted predictors for `*_pred` objectives, refitted from their saved tables (no pickle),
    or a latency lookup table (`latency fit --lut`); one fitted on another device (its
    column's key) or space is refused."""
    from search.latency import LatencyLUT, LatencyPredictor
    from search.latency.lut import is_lut_file
    from search.placement import split
    from search.predictors import AccuracyPredictor
    from search.predictors.base import PredictorError

    out = {}
    for name, path in cfg.predictors.items():
        base, _ = split(name)
        if base not in ("latency_ms_pred", "top1_pred") or (base == "top1_pred" and base != name):
            raise PredictorError(f"predictors.{name}: only latency_ms_pred[@DEVICE] and top1_pred exist")
        space = net.space
        if base == "latency_ms_pred" and is_lut_file(path):
            out[name] = LatencyLUT.load(path, space, device=keys[name]).bound(net, input_shape)
        elif base == "latency_ms_pred":
            out[name] = LatencyPredictor.load(path, space, device=keys[name])
        else:
            out[name] = AccuracyPredictor.load(path, space)
    return out
