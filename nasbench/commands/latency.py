"""`nasbench latency measure | fit | evaluate`: the latency runners from the shell.

`measure CONFIG` accepts a YAML file or a `nasbench train` run directory (its supernet is
rebuilt; weights do not change latency); `measure --resume RUN` continues a killed measurement.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nasbench.commands.common import (
    CONFIG_ARGUMENT,
    QUIET_OPTION,
    RESUME_OPTION,
    SET_OPTION,
    resume_target,
)

app = typer.Typer(help="Measure latency tables and fit latency predictors.", no_args_is_help=True)


@app.command("measure")
def measure(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    resume: Path | None = RESUME_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Time N subnets stratified by size; writes a run with latency.parquet. `--resume RUN`
    times only the visits a killed measurement had not journaled (its settings unchanged)."""
    from nasbench.progress import set_quiet
    from nasbench.runners import latency
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    if resume is not None:
        resume, config = resume_target("latency", resume, config)
    if config is not None and config.is_dir():
        overrides = [f"supernet.from_run={config}", *overrides]
        config = None
    latency.measure(resolve(latency.LatencyMeasureConfig, config, cli_overrides=overrides),
                    resume=resume)


@app.command("fit")
def fit(
    run_dir: Path = typer.Argument(..., help="A `nasbench latency measure` run."),
    holdout: float = typer.Option(0.25, help="Fraction of the table held out for metrics."),
    regressors: str = typer.Option("ridge,svr,gbr,mlp", help="Candidates for K-fold CV."),
    encoding: str = typer.Option("features", help="Arch encoding: features | one_hot."),
    use_macs: bool = typer.Option(False, "--use-macs", help="Add log(MACs) to the encoding."),
    folds: int = typer.Option(5, min=2, help="K of K-fold cross-validation."),
    seed: int = typer.Option(0, help="Seed of the split and the regressors."),
    force: bool = typer.Option(False, "--force", help="Save the predictor even when its held-out "
                               "set is under 20 rows, its MAPE over 25% or its tau below MACs'."),
    lut: bool = typer.Option(False, "--lut", help="Fit the OFA-style per-block lookup table "
                             "(latency_lut.json) instead of a learned predictor."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Fit a latency predictor; print held-out metrics; save it into the run (refused, exit 2,
    when its numbers cannot be trusted, unless --force)."""
    from nasbench.progress import set_quiet
    from nasbench.runners import latency

    set_quiet(quiet)
    if lut:
        latency.fit_lut(run_dir, holdout=holdout, seed=seed, force=force)
        return
    latency.fit(run_dir, holdout=holdout, regressors=regressors, encoding=encoding,
                use_macs=use_macs, folds=folds, seed=seed, force=force)


@app.command("evaluate")
def evaluate(
    predictor_run: Path = typer.Argument(..., help="Run holding latency_predictor.json."),
    table_run: Path = typer.Argument(..., help="A latency measure run to score it on."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Score a saved latency predictor on another table of the same device and space."""
    from nasbench.progress import echo, set_quiet
    from nasbench.runners import latency

    set_quiet(quiet)
    echo(latency.format_metrics(latency.evaluate(predictor_run, table_run)))
