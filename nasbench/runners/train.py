"""The train runner: a weight-sharing supernet trained into a run directory.

The run gets `config.yaml`, `manifest.json`, `metrics.csv` (one row per epoch: per-member
losses, val accuracy of the smallest and largest subnet, lr, images/s) and
`checkpoints/epoch_NNNN.{safetensors,optim.safetensors,json}`. A resumed run continues from
its newest checkpoint with the run's own config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.errors import ConfigError
from nasbench.runs import Run

MetricsCallback = Callable[[dict[str, Any]], None]


class SupernetSection(StrictModel):
    """Which supernet: a registered family, its preset and width, extra family kwargs, MoS."""

    family: str = "mbv3"
    preset: str = "tiny"
    width_mult: float = Field(default=1.0, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mos: dict[str, Any] | None = None


class RaySection(StrictModel):
    """`runner: ray`: Ray Train workers (DDP); `data.batch_size` is per worker."""

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=0, ge=-1)
    address: str | None = None


class TrainConfig(StrictModel):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    supernet: SupernetSection = SupernetSection()
    train: dict[str, Any] = Field(default_factory=dict)
    device: str = "auto"
    runner: Literal["local", "ray"] = "local"
    ray: RaySection = RaySection()

    @model_validator(mode="after")
    def _check_hparams_and_device(self) -> TrainConfig:
        """The free-form `train` section and `device` are checked with the rest of the config,
        so a typo fails before a run directory exists (raised as ConfigError, not wrapped)."""
        from supernets.train import TrainHParams

        TrainHParams.from_dict(self.train, prefix="train.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"key 'device': expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        return self


def run(config: TrainConfig, *, resume: Path | None = None, on_metrics: MetricsCallback | None = None) -> Run:
    """Build data and supernet from `config`, train locally or on Ray. `on_metrics` gets each
    epoch's row as it is logged (a notebook's live plot, a test's probe)."""
    import supernets
    from nasbench.data import load_dataset
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from supernets.train import TrainHParams

    cfg = config
    hparams = TrainHParams.from_dict(cfg.train, prefix="train.")
    device = _device(cfg.device)
    seed = cfg.run.seed
    seed_everything(seed)
    bundle = load_dataset(cfg.data, seed=seed)
    net = supernets.create(
        cfg.supernet.family, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
        width_mult=cfg.supernet.width_mult, preset=cfg.supernet.preset, mos=cfg.supernet.mos,
        **cfg.supernet.kwargs,
    )
    data_cfg = cfg.data
    if data_cfg.resolution is None and "resolution" in net.space:
        # Feed the largest resolution; smaller archs downsample it (prepare_input).
        largest = int(net.space.largest()["resolution"])
        data_cfg = data_cfg.model_copy(update={"resolution": largest})
        if bundle.resolution != largest:
            bundle = load_dataset(data_cfg, seed=seed)

    with start_run("train", cfg.model_dump(mode="json"), seed, root=cfg.run.root,
                   name=cfg.run.name, resume=resume) as run:
        run.update_manifest(
            supernet=net.build_config(), space_fingerprint=net.space.fingerprint(),
            space_cardinality=net.space.cardinality, hparams=hparams.to_dict(),
        )
        total = hparams.epochs

        def log(row: dict[str, Any]) -> None:
            run.log_metrics(row)
            echo(_summary(row, total))
            if on_metrics is not None:
                on_metrics(row)

        if cfg.runner == "ray":
            history = _train_ray(cfg, run.path, net, data_cfg, hparams, log)
        else:
            history = _train_local(net, bundle, hparams, device, run.checkpoints, resume, log)
        final = history[-1] if history else {}
        run.update_manifest(
            checkpoint=str(run.checkpoints.relative_to(run.path)),
            final={k: v for k, v in final.items() if k.startswith(("val_acc", "loss_"))},
        )
        echo(f"trained {len(history)} epochs -> {run.path}")
        return run


def _train_local(net, bundle, hparams, device, checkpoint_dir, resume, log) -> list[dict]:
    from supernets.train import train_supernet

    steps = len(bundle.train_dataset) // bundle.batch_size + bool(
        len(bundle.train_dataset) % bundle.batch_size
    )
    if hparams.max_steps_per_epoch is not None:
        steps = min(steps, hparams.max_steps_per_epoch)
    result = train_supernet(
        net,
        _TrackedLoader(bundle.train_loader, steps),
        bundle.val_loader,
        hparams,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume is not None,
        on_metrics=log,
        arch_sampler_seed=bundle.seed,
        # A fixed, unshuffled slice of the training set: same BN statistics every epoch.
        recal_loader=bundle.loader(bundle.train_dataset, shuffle=False),
    )
    return result.history


def _train_ray(cfg: TrainConfig, run_path: Path, net, data_cfg, hparams, log) -> list[dict]:
    from nasbench.distributed.train import RayScaling, train_on_ray

    outcome = train_on_ray(
        run_path,
        build_config=net.build_config(),
        data=data_cfg.model_dump(mode="json"),
        hparams=hparams,
        seed=cfg.run.seed,
        scaling=RayScaling(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker}, max_failures=cfg.ray.max_failures,
        ),
        log_metrics=log,
        address=cfg.ray.address,
    )
    return outcome.history


class _TrackedLoader:
    """A training loader whose passes show a progress bar; attributes pass through (generator)."""

    def __init__(self, loader: Any, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        from nasbench.progress import track

        # The training loop stops after `steps` batches without asking for more, so the bar is
        # driven by its own ticks and finished before the last batch is handed over.
        ticks = iter(track(range(self.steps), "training", total=self.steps))
        for i, batch in enumerate(islice(self.loader, self.steps)):
            next(ticks, None)
            if i == self.steps - 1:
                for _ in ticks:
                    pass
            yield batch


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return name


def _summary(row: dict[str, Any], total: int) -> str:
    parts = [f"epoch {row['epoch']}/{total}"]
    for key in ("loss_largest", "loss_smallest", "loss_random", "loss_uniform",
                "val_acc_smallest", "val_acc_largest"):
        if key in row:
            parts.append(f"{key}={row[key]:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
