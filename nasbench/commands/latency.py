"""`nasbench latency measure | fit | evaluate`: latency tables on this machine and predictors.

`measure CONFIG` samples subnets stratified by MACs, times each extracted subnet and writes a
run with `latency.parquet` and the device facts in its manifest. CONFIG is a YAML file or a
`nasbench train` run directory (its supernet is rebuilt; weights do not change latency).
`fit RUN` fits a latency predictor (regressor chosen by K-fold CV) on part of the table,
reports held-out RMSE, MAPE, ±10% accuracy and Kendall tau next to the MACs proxy's tau,
and saves the predictor (refitted on every row) as `latency_predictor.{json,parquet}`.
`evaluate PREDICTOR_RUN TABLE_RUN` scores a saved predictor on another latency table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION
from nasbench.config import RunConfig, StrictModel, load_config
from nasbench.errors import RunError, UserError

app = typer.Typer(help="Measure latency tables and fit latency predictors.", no_args_is_help=True)

PREDICTOR = "latency_predictor"


class SupernetSection(StrictModel):
    """The supernet to time: a family and preset, or the supernet of a `nasbench train` run."""

    family: str = "mbv3"
    preset: str = "tiny"
    width_mult: float = Field(default=1.0, gt=0)
    num_classes: int = Field(default=10, ge=1)
    in_chans: int = Field(default=3, ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    from_run: Path | None = None


class MeasureSection(StrictModel):
    """How many subnets and how to time them."""

    n: int = Field(default=100, ge=2)
    backend: Literal["torch", "onnxruntime"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=1)
    warmup: int = Field(default=10, ge=0)
    repeats: int = Field(default=50, ge=1)
    compile: bool = False
    clock: Literal["wall", "cpu"] = "wall"
    extract: bool = True
    rounds: int = Field(default=1, ge=1)
    resolution: int | None = Field(default=None, ge=4)
    pool_factor: int = Field(default=3, ge=1)
    bins: int = Field(default=10, ge=1)


class LatencyMeasureConfig(StrictModel):
    run: RunConfig = RunConfig()
    supernet: SupernetSection = SupernetSection()
    latency: MeasureSection = MeasureSection()


def _build_supernet(section: SupernetSection):
    import supernets

    if section.from_run is not None:
        from nasbench.runs import load_run

        run = load_run(section.from_run)
        build = run.manifest.get("supernet")
        if not isinstance(build, dict) or "name" not in build:
            raise RunError(f"run {run.path} records no supernet (is it a `nasbench train` run?)")
        build = dict(build)
        return supernets.create(build.pop("name"), **build)
    return supernets.create(
        section.family, preset=section.preset, width_mult=section.width_mult,
        num_classes=section.num_classes, in_chans=section.in_chans, **section.kwargs,
    )


def _input_shape(net, cfg: MeasureSection) -> tuple[int, ...] | None:
    if cfg.resolution is None:
        return None
    chans = int(net.build_config().get("in_chans", 3))
    return (chans, cfg.resolution, cfg.resolution)


@app.command("measure")
def measure(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Time N subnets stratified by size; writes a run with latency.parquet."""
    from nasbench.progress import set_quiet

    set_quiet(quiet)
    if config is not None and config.is_dir():
        overrides = [f"supernet.from_run={config}", *overrides]
        config = None
    cfg = load_config(LatencyMeasureConfig, config, overrides)
    run_measure(cfg)


def run_measure(cfg: LatencyMeasureConfig) -> Path:
    """Sample, time and store; returns the run directory."""
    from dataclasses import asdict

    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from search.costs import count_macs, subnet_input_shape
    from search.latency import LatencySettings, measure_archs, stratified_sample

    m = cfg.latency
    settings = LatencySettings(
        backend=m.backend, device=m.device, batch=m.batch, threads=m.threads, warmup=m.warmup,
        repeats=m.repeats, compile=m.compile, clock=m.clock,
    ).resolve()
    seed_everything(cfg.run.seed)
    net = _build_supernet(cfg.supernet).eval()
    shape = _input_shape(net, m)
    info = settings.device_info()

    def macs_of(arch: dict) -> float:
        return float(count_macs(net.extract(arch), subnet_input_shape(net, arch, shape)))

    with start_run("latency", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name) as run:
        run.update_manifest(
            device=info.to_dict(), settings=asdict(settings), supernet=net.build_config(),
            space=net.space.to_dict(), space_fingerprint=net.space.fingerprint(),
        )
        echo(f"device {info.key}")
        archs = stratified_sample(net.space, macs_of, m.n, cfg.run.seed,
                                  pool_factor=m.pool_factor, bins=m.bins)
        table = measure_archs(net, archs, settings, extract=m.extract, input_shape=shape,
                              rounds=m.rounds, seed=cfg.run.seed, on_progress=_progress_lines())
        run.write_table("latency", table, metadata={
            "device": info.key, "space_fingerprint": net.space.fingerprint(),
        })
        run.update_manifest(latency_rows=len(table))
        echo(f"{len(table)} subnets: latency {table['latency_ms'].min():.3f}-"
             f"{table['latency_ms'].max():.3f} ms (median), MACs {int(table['macs'].min()):,}-"
             f"{int(table['macs'].max()):,} -> {run.path / 'latency.parquet'}")
        return run.path


def _progress_lines():
    """A progress callback printing one line per tenth of the timed visits."""
    from nasbench.progress import echo

    def report(done: int, total: int) -> None:
        if done == total or done * 10 // total != (done - 1) * 10 // total:
            echo(f"timed {done}/{total}")

    return report


def _latency_run(path: Path):
    from nasbench.runs import load_run
    from supernets.space import SearchSpace

    run = load_run(path)
    table = run.read_table("latency")
    if table.empty or "space" not in run.manifest:
        raise RunError(f"run {run.path} has no latency table: make one with `nasbench latency measure`")
    return run, table, SearchSpace(run.manifest["space"])


def format_metrics(m: dict[str, float]) -> str:
    """One line: the predictor's held-out numbers with the MACs proxy's tau beside them."""
    line = (f"n={m['n']}  Kendall tau {m['kendall_tau']:.3f}")
    if "macs_kendall_tau" in m:
        line += f" (MACs proxy tau {m['macs_kendall_tau']:.3f})"
    return line + f"  MAPE {m['mape']:.2f}%  within ±10% {100 * m['acc10']:.1f}%  RMSE {m['rmse']:.4f} ms"


@app.command("fit")
def fit(
    run_dir: Path = typer.Argument(..., help="A `nasbench latency measure` run."),
    holdout: float = typer.Option(0.25, help="Fraction of the table held out for metrics."),
    regressors: str = typer.Option("ridge,svr,gbr,mlp", help="Candidates for K-fold CV."),
    encoding: str = typer.Option("features", help="Arch encoding: features | one_hot."),
    use_macs: bool = typer.Option(False, "--use-macs", help="Add log(MACs) to the encoding."),
    folds: int = typer.Option(5, min=2, help="K of K-fold cross-validation."),
    seed: int = typer.Option(0, help="Seed of the split and the regressors."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Fit a latency predictor; print held-out metrics; save it into the run."""
    import numpy as np

    from nasbench.progress import echo, set_quiet
    from search.latency import LatencyPredictor

    set_quiet(quiet)
    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be in (0, 1), got {holdout}")
    run, table, space = _latency_run(run_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    n_test = max(1, round(holdout * len(table)))
    test, train = table.iloc[order[:n_test]], table.iloc[order[n_test:]]
    if len(train) < folds:
        raise UserError(f"only {len(train)} training rows for {folds}-fold CV: measure more subnets")
    candidates = [c.strip() for c in regressors.split(",") if c.strip()]
    predictor = LatencyPredictor(space, encoding=encoding, use_macs=use_macs,
                                 candidates=candidates, folds=folds, seed=seed).fit(train)
    metrics = predictor.evaluate(test)
    sel = predictor.selection
    echo(f"chosen by {folds}-fold CV: {sel.name} {sel.params} (CV MAPE {-100 * sel.cv_score:.2f}%)")
    echo(f"held-out {format_metrics(metrics)}")
    path = predictor.refit(table).save(run.path / PREDICTOR)
    report = {"selection": {"name": sel.name, "params": sel.params, "cv_score": sel.cv_score,
                            "candidates": sel.scores.to_dict("records")},
              "holdout": metrics, "n_train": len(train), "predictor": path.name}
    run.write_json("latency_fit.json", report)
    run.update_manifest(latency_fit={"model": sel.name, **metrics})
    echo(f"predictor (refitted on all {len(table)} rows) -> {path}")


@app.command("evaluate")
def evaluate(
    predictor_run: Path = typer.Argument(..., help="Run holding latency_predictor.json."),
    table_run: Path = typer.Argument(..., help="A latency measure run to score it on."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Score a saved latency predictor on another table of the same device and space."""
    from nasbench.progress import echo, set_quiet
    from nasbench.runs import load_run
    from search.latency import LatencyPredictor

    set_quiet(quiet)
    _, table, space = _latency_run(table_run)
    device = str(table["device"].iloc[0])
    source = load_run(predictor_run)
    predictor = LatencyPredictor.load(source.path / PREDICTOR, space, device=device)
    echo(format_metrics(predictor.evaluate(table)))
