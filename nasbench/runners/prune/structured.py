"""The prune runner's structured branch (`prune.kind: structured`): channels really removed.

`pruners.shrink` removes `prune.sparsity` of the prunable channels (the fraction of channels,
not of weights) with `prune.method` from `pruners.list_pruners(kind="structured")`, then the
smaller model is fine-tuned and exported. The run gets `channels.json` (the plan; replay it with
`pruners.apply_plan` on a fresh model), `pruned.safetensors` (the shrunk model's weights),
`pruned.onnx`, `metrics.csv` and `summary.json`. Sizes and speed are measured next to the dense
model: parameters, ONNX bytes (both graphs exported the same way, in memory) and onnxruntime
batch-1 latency on one CPU thread; MACs are counted by `torch.utils.flop_counter`, not timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasbench.errors import ConfigError
from nasbench.runners.prune import PruneConfig, build_model, data_for
from nasbench.runs import Run

LATENCY_REPEATS = 30


def measure(model: Any, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Measured size and speed of `model`: params, ONNX bytes, onnxruntime batch-1 latency
    (median ms, 1 thread); and its MACs per sample (counted, not measured)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from search.latency.measure import LatencySettings, measure_latency, onnx_bytes

    x = torch.zeros((1, *input_shape))
    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    settings = LatencySettings(backend="onnxruntime", device="cpu", batch=1, threads=1,
                               warmup=5, repeats=LATENCY_REPEATS)
    return {"params": sum(p.numel() for p in model.parameters()),
            "onnx_bytes": len(onnx_bytes(model, x)),
            "ort_latency_ms": measure_latency(model, input_shape, settings).median_ms,
            "macs_counted": counter.get_total_flops() // 2}


def run_structured(config: PruneConfig, *, resume: Path | None = None) -> Run:
    """Shrink `config.model` with a structured method, fine-tune, measure, export to ONNX."""
    import safetensors.torch

    import pruners
    from nasbench.classify import adam_train_fn, evaluate, shuffled_batches
    from nasbench.data import load_dataset
    from nasbench.onnx_export import export_onnx
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.atomic import atomic_path
    from nasbench_core.seeding import seed_everything, seeded
    from pruners.structured import check_shrink, shrink_with_plan

    cfg = config
    options = pruners.validate_shrink_options(cfg.prune.method, cfg.prune.kwargs, where="prune.kwargs")
    if resume is not None:
        raise ConfigError("prune.kind=structured has no per-level state to resume; start a new run")
    needs_data = "data" in pruners.SHRINKERS.entry(cfg.prune.method).meta["needs"]
    seed_everything(cfg.run.seed)
    bundle = load_dataset(data_for(cfg), seed=cfg.run.seed)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_chans)
    loader = bundle.train_loader
    train_fn = adam_train_fn(shuffled_batches(bundle.train_dataset, bundle.batch_size, cfg.run.seed,
                                              bundle.num_workers), len(loader), cfg.finetune.lr)
    example = next(iter(bundle.val_loader))[0][:1]
    shape = tuple(example.shape[1:])
    check_shrink(model, cfg.prune.method, cfg.prune.sparsity, example_input=example, **options)

    with start_run("prune", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name) as run:
        if cfg.model.train_epochs:
            echo(f"training {cfg.model.name} for {cfg.model.train_epochs} epochs before pruning")
            with seeded(cfg.run.seed):
                train_fn(model, pruners.Span(0, "it"), pruners.Span(cfg.model.train_epochs, "ep"),
                         lambda it, ep: None)
        model.eval()
        before = evaluate(model, bundle.val_loader)
        run.log_metrics({"stage": "dense", "val_acc": before, "sparsity": 0.0})
        small, plan = shrink_with_plan(
            model, cfg.prune.method, cfg.prune.sparsity, example_input=example,
            **({"data": loader} if needs_data else {}), **options)
        fraction = plan.pruned / max(plan.channels, 1)
        after = evaluate(small, bundle.val_loader)
        run.log_metrics({"stage": "pruned", "val_acc": after, "sparsity": fraction})
        tuned = after
        if cfg.finetune.epochs:
            with seeded(cfg.run.seed + 1):
                train_fn(small, pruners.Span(0, "it"), pruners.Span(cfg.finetune.epochs, "ep"),
                         lambda it, ep: None)
            tuned = evaluate(small, bundle.val_loader)
            run.log_metrics({"stage": "finetuned", "val_acc": tuned, "sparsity": fraction})
        run.write_json("channels.json", plan.to_json())
        with atomic_path(run.path / "pruned.safetensors") as tmp:
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp))
        summary: dict[str, Any] = {
            "kind": "structured", "method": cfg.prune.method, "channel_fraction": fraction,
            "channels_pruned": plan.pruned, "channels": plan.channels,
            "acc_dense": before, "acc_pruned": after, "acc_finetuned": tuned}
        if cfg.onnx:
            result = export_onnx(small, shape, run.path / "pruned.onnx")
            summary["onnx_max_abs_diff"] = result.max_abs_diff
            dense, shrunk = measure(model, shape), measure(small, shape)
            summary["measured"] = {"dense": dense, "shrunk": shrunk}
            echo(_line(dense, shrunk))
        run.update_manifest(summary=summary)
        run.write_json("summary.json", summary)
        echo(f"{cfg.prune.method} (structured) {fraction:.1%} of channels: acc {before:.3f} -> "
             f"{after:.3f} -> {tuned:.3f} (fine-tuned) -> {run.path}")
        return run


def _line(dense: dict[str, float], shrunk: dict[str, float]) -> str:
    return (f"params {dense['params'] / 1e6:.3f}M -> {shrunk['params'] / 1e6:.3f}M, "
            f"ONNX {dense['onnx_bytes'] / 1e6:.2f} -> {shrunk['onnx_bytes'] / 1e6:.2f} MB, "
            f"onnxruntime batch-1 latency {dense['ort_latency_ms']:.3f} -> "
            f"{shrunk['ort_latency_ms']:.3f} ms (measured, 1 thread); "
            f"MACs -{1 - shrunk['macs_counted'] / max(dense['macs_counted'], 1):.1%} (counted)")
