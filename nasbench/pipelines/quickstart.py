"""The quickstart pipeline: every step is the real command's code, on a small budget.

results/quickstart/ is a run whose sub-runs are train/, latency/, search/ and prune/, so each
opens with `nasbench results` or `nasbench.load_run` like any other run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nasbench.progress import echo

LATENCY = {"backend": "torch", "batch": 1, "threads": 1, "warmup": 3, "repeats": 10}


def _train(cfg: Any, root: Path) -> Path:
    from nasbench.commands.train import SupernetSection, TrainConfig, run_training
    from nasbench.config import RunConfig

    train_cfg = TrainConfig(
        run=RunConfig(name="train", root=root, seed=cfg.run.seed),
        data=cfg.data,
        supernet=SupernetSection(family=cfg.family, preset="tiny"),
        train={"epochs": cfg.epochs, "optimizer": "sgd", "lr": 0.1, "warmup_epochs": min(1, cfg.epochs - 1),
               "sampling": "sandwich", "num_random": 1, "label_smoothing": 0.1, "grad_clip": 1.0,
               "bn_recal_batches": 3},
        device="cpu",
    )
    return run_training(train_cfg, source="quickstart")


def _latency(cfg: Any, root: Path, train_path: Path) -> Path:
    from nasbench.commands import latency
    from nasbench.config import RunConfig

    measure_cfg = latency.LatencyMeasureConfig(
        run=RunConfig(name="latency", root=root, seed=cfg.run.seed),
        supernet=latency.SupernetSection(from_run=train_path),
        latency=latency.MeasureSection(n=cfg.latency_samples, device="cpu", **LATENCY),
    )
    path = latency.run_measure(measure_cfg)
    latency.fit(run_dir=path, holdout=0.25, regressors="ridge,svr,gbr,mlp", encoding="features",
                use_macs=False, folds=5, seed=cfg.run.seed, quiet=False)
    return path


def _search(cfg: Any, root: Path, train_path: Path, latency_path: Path) -> Path:
    from nasbench.commands.search import (
        EvaluationConfig,
        OptimizerConfig,
        SearchConfig,
        SupernetSource,
        run_search,
    )
    from nasbench.config import RunConfig

    search_cfg = SearchConfig(
        supernet=SupernetSource(run=train_path),
        objectives=["top1", "latency_ms_pred"],
        optimizer=OptimizerConfig(name="nsga2", settings={"pop_size": cfg.population}),
        budget=cfg.search_budget,
        evaluation=EvaluationConfig(device="cpu", bn_batches=3),
        latency=LATENCY,
        predictors={"latency_ms_pred": latency_path / "latency_predictor.json"},
        run=RunConfig(name="search", root=root, seed=cfg.run.seed),
    )
    return run_search(search_cfg)


def _prune(cfg: Any, root: Path, search_path: Path, record: dict) -> dict[str, float]:
    """Global magnitude on the exported subnet, a short fine-tune, accuracy and sparsity."""
    import pruners
    import supernets
    from nasbench.classify import evaluate, fit
    from nasbench.commands.search import SearchConfig, load_search_supernet
    from nasbench.export import export_onnx
    from nasbench.runs import load_run, start_run

    search_cfg = SearchConfig.model_validate(load_run(search_path).config)
    net, data, _ = load_search_supernet(search_cfg, "cpu")
    arch = record["arch"]
    net.set_active(arch)
    supernets.recalibrate_bn(net, data.train_loader, search_cfg.evaluation.bn_batches)
    subnet = net.extract(arch).eval()
    train_loader, val_loader = (_Resized(loader, arch) for loader in (data.train_loader, data.val_loader))
    shape = tuple(record["input_shape"][1:])
    with start_run("prune", {"arch": arch, "method": "global_magnitude", "sparsity": cfg.prune_sparsity},
                   cfg.run.seed, root=root, name="prune") as run:
        dense = evaluate(subnet, val_loader)
        pruners.prune(subnet, "global_magnitude", cfg.prune_sparsity)
        pruned = evaluate(subnet, val_loader)
        if cfg.finetune_epochs:
            fit(subnet, train_loader, epochs=cfg.finetune_epochs, lr=0.01, weight_decay=0.0)
        finetuned = evaluate(subnet, val_loader)
        import torch

        report = pruners.sparsity_report(subnet, torch.zeros(1, *shape))
        pruners.make_permanent(subnet)
        run.write_table("sparsity", report)
        export = export_onnx(subnet, shape, run.path / "pruned.onnx")
        summary = {"top1_dense": dense, "top1_pruned": pruned, "top1_finetuned": finetuned,
                   "sparsity": float(report.loc[report["layer"] == "__global__", "sparsity"].iloc[0]),
                   "onnx_max_abs_diff": export.max_abs_diff}
        run.log_metrics(summary)
        run.update_manifest(summary=summary)
    return summary


class _Resized:
    """A loader whose images are resized to the arch's resolution, as the subnet expects."""

    def __init__(self, loader: Any, arch: dict):
        self.loader, self.arch = loader, arch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        from supernets import prepare_input

        for images, labels in self.loader:
            yield prepare_input(images, self.arch), labels


def _print_front(search_path: Path) -> None:
    import pandas as pd

    from nasbench.runs import load_run

    front = load_run(search_path).pareto.sort_values("latency_ms_pred")
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        echo("Pareto front (top1 accuracy vs predicted latency in ms):")
        echo(front[["arch_id", "top1", "latency_ms_pred"]].to_string(index=False))


def run_quickstart(cfg: Any) -> Path:
    from nasbench.commands.export import export_subnet
    from nasbench.runs import load_run, start_run

    started = time.perf_counter()
    with start_run("quickstart", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name, overwrite=True) as run:
        root = run.path
        echo(f"[1/5] training a tiny {cfg.family} supernet on {cfg.data.name} (BigNAS sandwich rule)")
        train_path = _train(cfg, root)
        echo(f"[2/5] measuring latency of {cfg.latency_samples} subnets on this CPU, fitting a predictor")
        latency_path = _latency(cfg, root, train_path)
        echo(f"[3/5] NSGA-II search, top1 x predicted latency, {cfg.search_budget} evaluations")
        search_path = _search(cfg, root, train_path, latency_path)
        _print_front(search_path)
        evaluations = load_run(search_path).evaluations
        budget = float(evaluations["latency_ms_pred"].quantile(cfg.latency_budget_quantile))
        echo(f"[4/5] exporting the most accurate subnet with predicted latency <= {budget:.3f} ms")
        record = export_subnet(search_path, pick=[f"latency_ms_pred <= {budget:.6f}"], objective="top1")
        echo(f"[5/5] pruning it: global magnitude at {cfg.prune_sparsity:.0%}, {cfg.finetune_epochs} "
             "fine-tune epoch(s)")
        pruned = _prune(cfg, root, search_path, record)
        summary = {
            "train_run": str(train_path), "latency_run": str(latency_path), "search_run": str(search_path),
            "exported": record["onnx"], "exported_metrics": record["metrics"], "prune": pruned,
            "seconds": round(time.perf_counter() - started, 1),
        }
        run.update_manifest(summary=summary)
    echo(f"pruned subnet: top1 {pruned['top1_dense']:.1%} dense -> {pruned['top1_pruned']:.1%} pruned -> "
         f"{pruned['top1_finetuned']:.1%} fine-tuned at {pruned['sparsity']:.1%} sparsity")
    echo(f"quickstart done in {summary['seconds']:.0f}s. Open next:")
    echo(f"  nasbench results {search_path}          # evaluations and Pareto tables")
    echo(f"  {search_path / 'pareto.png'}            # the front")
    echo(f"  {search_path / record['onnx']}  # the exported subnet")
    echo(f"  NASBENCH_RUN={search_path.resolve()} jupyter lab examples/pareto.ipynb  # needs jupyterlab")
    return run.path
