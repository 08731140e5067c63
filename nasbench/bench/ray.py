"""`nasbench bench ray`: what Ray Train costs against in-process training of the tiny supernet.

The same `train_supernet` call (vit-tiny on digits, sandwich rule, checkpoint every epoch)
runs three ways: in-process (the peer), Ray Train with 1 worker, Ray Train with 2 workers
(DDP over gloo). Per way we report:

- time_to_first_step_s: from the call until the first training step starts
  (for Ray: start of `trainer.fit()`, after `ray.init`, which is reported separately);
- step_s: median seconds per optimizer step inside the training loop (epochs after the first);
- images_per_s: global training throughput (all workers), median over epochs after the first.

Ratios: Ray 1 worker against in-process (startup and per-step overhead) and 2 workers against
1 (scaling). The per-worker batch is fixed, so 2 workers process twice the images per step.
On a 2-core machine two workers compete with Ray's own processes, so expect < 2x.

`--set` params (`RaySettings`): epochs, steps (per epoch), batch (per worker), threads (torch
threads per process, default 1 so the comparison is per core), address (a Ray cluster; default:
the `nasbench cluster up` cluster if one runs, else a Ray started in-process).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark

DATA = {"name": "digits", "resolution": 16, "channels": 1}


class RaySettings(BenchSettings):
    epochs: PositiveInt = 4
    steps: PositiveInt = 20
    batch: PositiveInt = 32
    threads: PositiveInt = 1
    address: str | None = None

    quick_defaults = {"epochs": 2, "steps": 3, "batch": 16}


def _build_config() -> dict[str, Any]:
    import supernets

    net = supernets.create("vit", preset="tiny", num_classes=10, in_chans=1, img_size=16,
                           patch_size=8)
    return net.build_config()


def _hparams(epochs: int, steps: int):
    from supernets.train import TrainHParams

    return TrainHParams(epochs=epochs, lr=0.05, warmup_epochs=0, max_steps_per_epoch=steps,
                        precision="fp32", val_max_batches=1, bn_recal_batches=1)


def _summary(history: list[dict[str, Any]], steps: int, workers: int) -> dict[str, float]:
    warm = history[1:] or history
    return {
        "step_s": round(statistics.median(row["epoch_time_s"] / steps for row in warm), 4),
        "images_per_s": round(statistics.median(row["images_per_s"] for row in warm) * workers, 1),
    }


def in_process(epochs: int, steps: int, batch: int, seed: int) -> dict[str, Any]:
    """The peer: `train_supernet` in this process, on the same data and schedule."""
    import supernets
    from nasbench.config.sections import DataConfig
    from nasbench.data import load_dataset
    from nasbench.distributed.train import sharded_loader
    from nasbench_core.seeding import seed_everything
    from supernets.train import train_supernet

    started = time.perf_counter()
    first_step: list[float] = []

    def note_first_step(epoch: int, step: int, steps_per_epoch: int) -> None:
        if not first_step:
            first_step.append(time.perf_counter())

    seed_everything(seed)
    bundle = load_dataset(DataConfig(**DATA, batch_size=batch), seed=seed)
    net = supernets.create(**_build_config())
    with tempfile.TemporaryDirectory() as ckpt:
        result = train_supernet(
            net, sharded_loader(bundle.train_dataset, batch, 1, 0, seed), bundle.val_loader,
            _hparams(epochs, steps), checkpoint_dir=ckpt, arch_sampler_seed=seed,
            on_progress=note_first_step,
            recal_loader=bundle.loader(bundle.train_dataset, shuffle=False),
        )
    # on_progress fires after the first step; subtract that step to get its start.
    first = first_step[0] - result.history[0]["epoch_time_s"] / steps - started
    return {"time_to_first_step_s": round(first, 2), **_summary(result.history, steps, 1)}


def on_ray(
    workers: int, epochs: int, steps: int, batch: int, seed: int, address: str | None
) -> dict[str, Any]:
    """Ray Train with `workers` CPU workers; the driver joins Ray (or starts it) first."""
    from nasbench.distributed.train import RayScaling, ray_session, train_on_ray

    with tempfile.TemporaryDirectory() as tmp:
        marks = Path(tmp) / "marks"
        marks.mkdir()

        def stamp_epoch1(epoch: int, rank: int, resumed: bool, marks: Path = marks) -> None:
            if epoch == 1 and rank == 0:
                (marks / "epoch1_end").write_text(repr(time.time()))

        init_started = time.perf_counter()
        with ray_session(address):
            init_s = time.perf_counter() - init_started
            fit_started = time.time()
            outcome = train_on_ray(
                Path(tmp) / "run", build_config=_build_config(),
                data={**DATA, "batch_size": batch}, hparams=_hparams(epochs, steps), seed=seed,
                scaling=RayScaling(num_workers=workers), address=address,
                after_epoch=stamp_epoch1,
            )
            total = time.time() - fit_started
        epoch1_end = float((marks / "epoch1_end").read_text())
    epoch1 = outcome.history[0]["epoch_time_s"]
    return {
        "ray_init_s": round(init_s, 2),
        "time_to_first_step_s": round(epoch1_end - epoch1 - fit_started, 2),
        "fit_total_s": round(total, 2),
        **_summary(outcome.history, steps, workers),
    }


@benchmark("ray", help="Ray Train vs in-process: time to first step, per-step overhead, 1 vs 2 workers",
           options=RaySettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    s = RaySettings.of(opts)
    epochs, steps, batch, address = s.epochs, s.steps, s.batch, s.address
    torch.set_num_threads(s.threads)
    peer = in_process(epochs, steps, batch, opts.seed)
    one = on_ray(1, epochs, steps, batch, opts.seed, address)
    two = on_ray(2, epochs, steps, batch, opts.seed, address)
    return {
        "setup": {"model": "vit tiny 16px", "data": "digits", "epochs": epochs,
                  "steps_per_epoch": steps, "batch_per_worker": batch},
        "in_process": peer,
        "ray_1_worker": one,
        "ray_2_workers": two,
        "ratios": {
            "first_step_ray1_over_in_process": round(
                one["time_to_first_step_s"] / max(peer["time_to_first_step_s"], 1e-9), 1),
            "step_overhead_ray1_s": round(one["step_s"] - peer["step_s"], 4),
            "step_time_ray1_over_in_process": round(one["step_s"] / peer["step_s"], 2),
            "throughput_2_over_1_workers": round(two["images_per_s"] / one["images_per_s"], 2),
        },
    }
