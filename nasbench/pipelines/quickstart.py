"""The quickstart pipeline. Each step is real; steps not built yet are not run, and it says so."""

from __future__ import annotations

import time
from typing import Any

from nasbench.progress import echo


def run_quickstart(cfg: Any) -> None:
    from safetensors.torch import save_file

    from nasbench.classify import evaluate, fit, small_cnn
    from nasbench.data import load_dataset
    from nasbench.runs import start_run
    from nasbench_core.atomic import atomic_path
    from nasbench_core.seeding import seed_everything

    seed_everything(cfg.run.seed)
    started = time.perf_counter()
    data = load_dataset(cfg.data, seed=cfg.run.seed)
    with start_run("quickstart", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name, overwrite=True) as run:
        echo(f"quickstart: {data.name} ({len(data.train_dataset)} train / {len(data.val_dataset)} val, "
             f"{data.resolution}px) -> {run.path}")
        model = small_cnn(data.in_chans, data.num_classes, width=cfg.width)
        fit(model, data.train_loader, epochs=cfg.epochs, lr=cfg.lr,
            on_epoch=lambda epoch, loss: run.log_metrics(
                {"epoch": epoch + 1, "train_loss": loss, "val_top1": evaluate(model, data.val_loader)}))
        top1 = evaluate(model, data.val_loader)
        with atomic_path(run.checkpoints / "small_cnn.safetensors") as tmp:
            save_file(model.state_dict(), str(tmp))
        run.update_manifest(summary={"model": "small_cnn", "val_top1": top1,
                                     "seconds": round(time.perf_counter() - started, 1)})
    echo(f"quickstart: small CNN val top-1 {top1:.1f}% after {cfg.epochs} epochs")
    echo(f"next: nasbench results {run.path}")

