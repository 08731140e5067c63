"""The search runner: multi-objective search over a supernet, written to a run.

The run gets `evaluations.log.jsonl` (every evaluation appended and fsynced as it finishes),
`evaluations.parquet` (compacted from the evaluator's rows atomically after every batch; readers
add the journal rows it lacks, so a killed search loses at most the evaluation in flight and
resumes without re-measuring anything), `pareto.parquet` and `pareto.png`. The supernet comes
from a train run (or a checkpoint); an untrained supernet (`supernet: {family, preset}`) is
allowed to try the pipeline and labelled as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.data.fixed import FixedSubset
from nasbench.errors import RunError
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
    bn_batches: int = Field(default=4, ge=1)
    val_batches: int | None = Field(default=None, ge=1)


class OptimizerConfig(StrictModel):
    name: str = "nsga2"
    settings: dict[str, Any] = Field(default_factory=dict)


class SearchConfig(StrictModel):
    supernet: SupernetSource = Field(default_factory=lambda: SupernetSource(family="mbv3"))
    data: DataConfig | None = None
    objectives: list[str] = Field(default_factory=lambda: ["top1", "macs"], min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    budget: int = Field(default=100, ge=1)
    constraints: list[str] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    latency: dict[str, Any] = Field(default_factory=dict)
    predictors: dict[str, Path] = Field(default_factory=dict)
    run: RunConfig = Field(default_factory=RunConfig)


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
    if source.run is not None:
        path = source.run
        if (path / "manifest.json").exists():
            train_run = load_run(path)
            if data_cfg is None and "data" in train_run.manifest.get("config", {}):
                data_cfg = DataConfig.model_validate(train_run.manifest["config"]["data"])
            path = train_run.path / "checkpoints"
        net, meta = load_supernet(path, device=device)
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
    return net, data, info


def run(config: SearchConfig, *, resume: Path | None = None) -> Run:
    """Search `config.supernet` for `config.budget` true evaluations; `resume` continues the
    run in that directory without re-measuring what its table already holds."""
    import search
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from search.evaluations import (
        EvaluationLog,
        check_compatible,
        log_path,
        read_table,
        with_pareto,
        write_table,
    )

    for name in config.objectives:
        search.objectives.objective_kind(name)
    constraints = [search.parse_constraint(c, search.list_objectives()) for c in config.constraints]
    optimizer = search.create_optimizer(config.optimizer.name, **config.optimizer.settings)
    device = _device_key(config, config.objectives + [c.column for c in constraints])
    seed_everything(config.run.seed)
    net, data, info = load_supernet(config, config.evaluation.device)
    if not info["trained"]:
        echo(f"warning: searching an UNTRAINED {info['family']} supernet (preset "
             f"{info['preset']}): accuracies only exercise the pipeline")
    predictors = _load_predictors(config, net.space, device)

    grows = resume is not None and _check_growth(resume, config.budget)
    with start_run("search", config.model_dump(mode="json"), config.run.seed, root=config.run.root,
                   name=config.run.name, resume=resume, reopen_completed=grows) as run:
        subset = FixedSubset.for_run(run.path, data, bn_batches=config.evaluation.bn_batches,
                                     val_batches=config.evaluation.val_batches,
                                     seed=config.run.seed)
        objectives, extra = _objectives(config, constraints, net, data, subset, predictors)
        table_path = run.path / "evaluations.parquet"
        table = None
        if table_path.exists():  # with the journal rows its last compaction missed
            table, meta = read_table(table_path)
            check_compatible(meta, space_fingerprint=net.space.fingerprint(), device=device,
                             metrics=[m.name for m in objectives + extra],
                             calibration=subset.id)
        done = 0 if table is None else len(table)
        run.update_manifest(supernet=info, space_fingerprint=net.space.fingerprint())

        shown = [done]

        def persist(df) -> None:
            write_table(table_path, df, evaluator.metadata())
            count = evaluator.n_new + done
            if count - shown[0] >= 10 or count == config.budget:
                shown[0] = count
                echo(f"evaluated {count}/{config.budget}")

        journal = EvaluationLog(log_path(table_path))
        evaluator = search.Evaluator(net.space, objectives, extra=extra, table=table,
                                     device=device, seed=config.run.seed,
                                     budget=max(0, config.budget - done), on_update=persist,
                                     log=journal, provenance={"calibration": subset.id})
        if table is None:  # the table's metadata is on disk before the journal's first row
            write_table(table_path, evaluator.df, evaluator.metadata())
        problem = search.SearchProblem(evaluator, constraints)
        with journal:
            optimizer.run(problem, seed=config.run.seed, workdir=run.path)

        df = evaluator.df
        feasible = search.feasible_mask(df, constraints)
        front = with_pareto(df[feasible], evaluator.directions)
        front = front[front["is_pareto"]].reset_index(drop=True)
        write_table(table_path, df, evaluator.metadata())
        write_table(run.path / "pareto.parquet", front, evaluator.metadata())
        x, y = _plot_axes(objectives)
        title = f"{config.optimizer.name}, {len(df)} evaluations"
        if not info["trained"]:
            title += " (UNTRAINED supernet)"
        _save_plot(df, evaluator.directions, x, y, feasible, title, run.path / "pareto.png")
        run.update_manifest(evaluations=len(df), pareto=len(front), feasible=int(feasible.sum()))
        echo(f"{len(df)} evaluations, {len(front)} on the Pareto front -> {run.path}")
        return run


def _objectives(config: SearchConfig, constraints, net, data, subset, predictors):
    """(objectives, extra metrics measured only for constraints); accuracy is measured on the
    run's fixed subset, so an arch's top1 does not depend on what was evaluated before it."""
    import search

    calib, val = subset.loaders(data)
    ctx = search.ObjectiveContext(
        supernet=net, calib_loader=calib, val_loader=val, device=config.evaluation.device,
        bn_batches=len(calib), val_batches=None,
        input_shape=(data.in_chans, data.resolution, data.resolution), latency=config.latency,
        predictors=predictors,
    )
    objectives = search.make_objectives(config.objectives, ctx)
    extra_names = [c.column for c in constraints if c.column not in config.objectives]
    return objectives, search.make_objectives(list(dict.fromkeys(extra_names)), ctx)


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


def _device_key(cfg: SearchConfig, columns: list[str]) -> str:
    """The table's `device`: the latency device key (hardware, backend, batch, threads) when
    latency is measured or predicted, so tables and predictors of other devices are refused."""
    import dataclasses

    from nasbench.errors import ConfigError
    from search.latency import LatencySettings

    if not set(columns) & {"latency_ms", "latency_ms_pred"}:
        return cfg.evaluation.device
    known = [f.name for f in dataclasses.fields(LatencySettings) if f.name != "device"]
    bad = [k for k in cfg.latency if k not in known]
    if bad:
        raise ConfigError(f"latency: unknown setting {bad[0]!r}; allowed: {', '.join(known)}")
    settings = LatencySettings(device=cfg.evaluation.device, **cfg.latency).resolve()
    return settings.device_info().key


def _load_predictors(cfg: SearchConfig, space, device: str) -> dict[str, Any]:
    """Fitted predictors for `*_pred` objectives, refitted from their saved tables (no pickle);
    a latency predictor fitted on another device or space is refused."""
    from search.latency import LatencyPredictor
    from search.predictors import AccuracyPredictor
    from search.predictors.base import PredictorError

    out = {}
    for name, path in cfg.predictors.items():
        if name not in ("latency_ms_pred", "top1_pred"):
            raise PredictorError(f"predictors.{name}: only latency_ms_pred and top1_pred exist")
        if name == "latency_ms_pred":
            out[name] = LatencyPredictor.load(path, space, device=device)
        else:
            out[name] = AccuracyPredictor.load(path, space)
    return out
