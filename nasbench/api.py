"""The public Python API: `nasbench.train / search / prune / quickstart / export / ...`.

Each job takes its config as a dict, a YAML path or the config model, plus keyword overrides
with the same dotted keys as the CLI's `--set` (`**{"train.epochs": 2}` or `train__epochs=2`),
and returns the `Run` it wrote. The CLI is a thin layer over the same runners, so a notebook and
the shell get the same validation, the same messages and the same run directories.

    run = nasbench.train("examples/train_mbv3_digits.yaml", **{"train.epochs": 2})
    found = nasbench.search({"supernet": {"run": run.path}, "budget": 30})
    best = nasbench.export(found, pick="macs <= 2e6")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nasbench.progress import quieted
from nasbench.runners import export as _export
from nasbench.runners import latency as _latency
from nasbench.runners import prune as _prune
from nasbench.runners import quickstart as _quickstart
from nasbench.runners import search as _search
from nasbench.runners import train as _train
from nasbench.runners.config import ConfigInput, resolve
from nasbench.runners.export import ExportResult
from nasbench.runners.latency import LatencyFit
from nasbench.runs import Run, load_run
from nasbench_core.errors import RunError

ResumeArg = bool | str | os.PathLike


def _resume_target(model: type, config: ConfigInput, resume: ResumeArg,
                   overrides: dict[str, Any]) -> tuple[Any, Path | None]:
    """(validated config, run dir to resume or None). `resume=True` resumes the run named by
    the config's run.root/run.name; a path resumes that run with its own stored config."""
    if resume is False or resume is None:
        return resolve(model, config, overrides=overrides), None
    if resume is True:
        cfg = resolve(model, config, overrides=overrides)
        if cfg.run.name is None:
            raise RunError("resume=True needs run.name in the config (or pass the run directory)")
        return cfg, Path(cfg.run.root) / cfg.run.name
    path = load_run(resume).path
    return resolve(model, path / "config.yaml" if config is None else config, overrides=overrides), path


def train(config: ConfigInput = None, /, *, resume: ResumeArg = False, quiet: bool = False,
          on_metrics: Callable[[dict[str, Any]], None] | None = None, **overrides: Any) -> Run:
    """Train a supernet (BigNAS sandwich rule by default); `on_metrics` sees each epoch's row."""
    cfg, path = _resume_target(_train.TrainConfig, config, resume, overrides)
    with quieted(quiet):
        return _train.run(cfg, resume=path, on_metrics=on_metrics)


def search(config: ConfigInput = None, /, *, resume: ResumeArg = False, quiet: bool = False,
           **overrides: Any) -> Run:
    """Multi-objective search over a supernet; the run holds evaluations and the Pareto front."""
    cfg, path = _resume_target(_search.SearchConfig, config, resume, overrides)
    with quieted(quiet):
        return _search.run(cfg, resume=path)


def prune(config: ConfigInput = None, /, *, resume: ResumeArg = False, quiet: bool = False,
          **overrides: Any) -> Run:
    """Prune a model with any registered pruner, fine-tune it and export it to ONNX; `resume`
    continues a killed lottery run."""
    cfg, path = _resume_target(_prune.PruneConfig, config, resume, overrides)
    with quieted(quiet):
        return _prune.run(cfg, resume=path)


def quickstart(config: ConfigInput = None, /, *, quiet: bool = False, **overrides: Any) -> Run:
    """Train -> latency -> search -> export -> prune on a small budget, in one run tree."""
    cfg = resolve(_quickstart.QuickstartConfig, config, overrides=overrides)
    with quieted(quiet):
        return _quickstart.run(cfg)


def export(run: Run | str | os.PathLike, *, arch_id: str | None = None,
           pick: str | Sequence[str] | None = None, objective: str | None = None,
           pick_from: str | None = None, quiet: bool = False) -> ExportResult:
    """Export one arch of a search run to safetensors + ONNX (verified with onnxruntime): by
    `arch_id`, or the best `objective` (default top1) meeting every `pick` constraint among the
    run's Pareto front of feasible archs (`pick_from="front"`, the default) or among all its
    evaluations (`pick_from="all"`); ties are broken deterministically (see `choose_row`)."""
    with quieted(quiet):
        return _export.export(run, arch_id=arch_id, pick=pick or (), objective=objective,
                              pick_from=pick_from)


def measure_latency(config: ConfigInput = None, /, *, resume: ResumeArg = False,
                    quiet: bool = False, **overrides: Any) -> Run:
    """Time subnets of a supernet on this machine; the run holds `latency.parquet`. `resume`
    continues a killed measurement, timing only the visits its journal lacks."""
    cfg, path = _resume_target(_latency.LatencyMeasureConfig, config, resume, overrides)
    with quieted(quiet):
        return _latency.measure(cfg, resume=path)


def fit_latency(run: Run | str | os.PathLike, *, quiet: bool = False, **options: Any) -> LatencyFit:
    """Fit a latency predictor on a measure run (options: holdout, regressors, encoding,
    use_macs, folds, seed, force); it is saved into the run for `predictors:` of a search.
    An untrustworthy fit (under 20 held-out rows, MAPE over 25%, tau below the MACs proxy's)
    raises `FitRefused` and saves nothing unless `force=True`."""
    with quieted(quiet):
        return _latency.fit(run, **options)


__all__ = ["ExportResult", "LatencyFit", "export", "fit_latency", "measure_latency", "prune",
           "quickstart", "search", "train"]
