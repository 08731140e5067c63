"""The quickstart runner: the whole pipeline, each step the real runner on a small budget.

results/quickstart/ is a run whose sub-runs are train/, latency/, search/ and prune/, so each
opens with `nasbench results` or `nasbench.load_run` like any other run.
"""

from __future__ import annotations

import time

from pydantic import Field

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.config.sections import MAX_BUDGET, MAX_EPOCHS
from nasbench.progress import echo
from nasbench.runs import Run

LATENCY = {"backend": "torch", "batch": 1, "threads": 1, "warmup": 3, "repeats": 10}


class QuickstartRun(RunConfig):
    name: str | None = "quickstart"


class QuickstartConfig(StrictModel):
    """Sizes of each step; the defaults finish in a few minutes on 2 CPU cores."""

    run: QuickstartRun = QuickstartRun()
    data: DataConfig = DataConfig(name="digits")
    family: str = "mbv3"
    epochs: int = Field(default=4, ge=1, le=MAX_EPOCHS)
    latency_samples: int = Field(default=40, ge=10, le=100_000)
    search_budget: int = Field(default=40, ge=4, le=MAX_BUDGET)
    population: int = Field(default=12, ge=4, le=100_000)
    latency_budget_quantile: float = Field(default=0.5, gt=0, le=1)
    prune_sparsity: float = Field(default=0.5, ge=0, lt=1)
    finetune_epochs: int = Field(default=1, ge=0, le=MAX_EPOCHS)


def _train(cfg: QuickstartConfig, root) -> Run:
    from nasbench.runners import train

    return train.run(train.TrainConfig(
        run=RunConfig(name="train", root=root, seed=cfg.run.seed),
        data=cfg.data,
        supernet=train.SupernetSection(family=cfg.family, preset="tiny"),
        train={"epochs": cfg.epochs, "optimizer": "sgd", "lr": 0.1, "warmup_epochs": min(1, cfg.epochs - 1),
               "sampling": "sandwich", "num_random": 1, "label_smoothing": 0.1, "grad_clip": 1.0,
               "bn_recal_batches": 3},
        device="cpu",
    ))


def _latency(cfg: QuickstartConfig, root, trained: Run) -> Run:
    from nasbench.runners import latency

    measured = latency.measure(latency.LatencyMeasureConfig(
        run=RunConfig(name="latency", root=root, seed=cfg.run.seed),
        supernet=latency.SupernetSection(from_run=trained.path),
        latency=latency.MeasureSection(n=cfg.latency_samples, device="cpu", **LATENCY),
    ))
    latency.fit(measured, seed=cfg.run.seed, force=True)  # a try-out: its warnings are shown
    return measured


def _search(cfg: QuickstartConfig, root, trained: Run, measured: Run) -> Run:
    from nasbench.runners import search

    return search.run(search.SearchConfig(
        supernet=search.SupernetSource(run=trained.path),
        objectives=["top1", "latency_ms_pred"],
        optimizer=search.OptimizerConfig(name="nsga2", settings={"pop_size": cfg.population}),
        budget=cfg.search_budget,
        evaluation=search.EvaluationConfig(device="cpu", bn_batches=3),
        latency=LATENCY,
        predictors={"latency_ms_pred": measured.path / "latency_predictor.json"},
        run=RunConfig(name="search", root=root, seed=cfg.run.seed),
    ))


def _prune(cfg: QuickstartConfig, root, searched: Run, arch_id: str) -> Run:
    """Global magnitude on the exported subnet with a short fine-tune: the prune runner itself."""
    from nasbench.runners import prune

    return prune.run(prune.PruneConfig(
        run=RunConfig(name="prune", root=root, seed=cfg.run.seed),
        data=cfg.data,
        model=prune.ModelSection(source="export", run=searched.path, arch_id=arch_id),
        prune=prune.PruneSection(method="global_magnitude", sparsity=cfg.prune_sparsity),
        finetune=prune.FinetuneSection(epochs=cfg.finetune_epochs),
    ))


def _print_front(searched: Run) -> None:
    import pandas as pd

    front = searched.pareto.sort_values("latency_ms_pred")
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        echo("Pareto front (top1 accuracy vs predicted latency in ms):")
        echo(front[["arch_id", "top1", "latency_ms_pred"]].to_string(index=False))


def run(config: QuickstartConfig) -> Run:
    """Train -> latency table + predictor -> NSGA-II -> ONNX export -> prune, in one run tree."""
    from nasbench.runners.export import export
    from nasbench.runs import start_run

    cfg = config
    started = time.perf_counter()
    with start_run("quickstart", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name, overwrite=True) as run:
        root = run.path
        echo(f"[1/5] training a tiny {cfg.family} supernet on {cfg.data.name} (BigNAS sandwich rule)")
        trained = _train(cfg, root)
        echo(f"[2/5] measuring latency of {cfg.latency_samples} subnets on this CPU, fitting a predictor")
        measured = _latency(cfg, root, trained)
        echo(f"[3/5] NSGA-II search, top1 x predicted latency, {cfg.search_budget} evaluations")
        searched = _search(cfg, root, trained, measured)
        _print_front(searched)
        budget = float(searched.evaluations["latency_ms_pred"].quantile(cfg.latency_budget_quantile))
        echo(f"[4/5] exporting the most accurate subnet with predicted latency <= {budget:.3f} ms")
        chosen = export(searched, pick=f"latency_ms_pred <= {budget:.6f}", objective="top1")
        echo(f"[5/5] pruning it: global magnitude at {cfg.prune_sparsity:.0%}, {cfg.finetune_epochs} "
             "fine-tune epoch(s)")
        pruned = _prune(cfg, root, searched, chosen.arch_id).manifest["summary"]
        summary = {
            "train_run": str(trained.path), "latency_run": str(measured.path), "search_run": str(searched.path),
            "exported": str(chosen.onnx.relative_to(searched.path)), "exported_metrics": chosen.metrics,
            "prune": pruned, "seconds": round(time.perf_counter() - started, 1),
        }
        run.update_manifest(summary=summary)
    echo(f"pruned subnet: top1 {pruned['acc_dense']:.1%} dense -> {pruned['acc_pruned']:.1%} pruned -> "
         f"{pruned['acc_finetuned']:.1%} fine-tuned at {pruned['sparsity']:.1%} sparsity")
    echo(f"quickstart done in {summary['seconds']:.0f}s. Open next:")
    echo(f"  nasbench results {searched.path}          # evaluations and Pareto tables")
    echo(f"  {searched.path / 'pareto.png'}            # the front")
    echo(f"  {chosen.onnx}  # the exported subnet")
    echo(f"  NASBENCH_RUN={searched.path.resolve()} jupyter lab examples/pareto.ipynb  # needs jupyterlab")
    return run
