"""The train runner: a weight-sharing supernet trained into a run directory.

The run gets `config.yaml`, `manifest.json`, `metrics.csv` (one row per epoch: per-member
losses, val accuracy of the smallest and largest subnet, lr, images/s) and
`checkpoints/epoch_NNNN.{safetensors,optim.safetensors,json}` (plus `epoch_NNNN_step_SSSSSS`
mid-epoch ones with `train.checkpoint_every`). A resumed run continues from its newest
checkpoint with the run's own config. The checkpoint holds the metrics rows of its epochs and
is written before metrics.csv, which a resume (and the end of a Ray run) rewrites from it: a
crash between the two writes loses no row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.config.sections import MAX_EPOCHS
from nasbench.errors import ConfigError
from nasbench.runs import Run

MetricsCallback = Callable[[dict[str, Any]], None]


class SupernetSection(StrictModel):
    """Which supernet: a registered family, its preset and width, extra family kwargs, MoS;
    or `from_timm: NAME`, a supernet whose largest arch is that timm model (InstaTune-style
    elastic fine-tuning), with `pretrained` weights from timm's cache or a `weights` file
    (state dict of the timm model; its classifier is replaced when the classes differ).
    Or `from_ofa: PATH`, Once-for-All's MobileNetV3 or ResNet-50 supernet from its checkpoint
    file (`family` checks which; OFA's space, its classifier replaced when the classes differ).
    `kwargs` then override the derived family options (e.g. `resolutions: [160, 224]`)."""

    family: str = "mbv3"
    preset: str = "tiny"
    width_mult: float = Field(default=1.0, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mos: dict[str, Any] | None = None
    from_timm: str | None = None
    from_ofa: Path | None = None
    pretrained: bool = False
    weights: Path | None = None
    reorder_channels: bool | None = None
    """Sort elastic channels by importance before training (as OFA does when it starts
    shrinking a trained full model), so that smaller widths keep the imported model's most
    important channels. Default: on for `from_timm` (one dense model), off for `from_ofa` (its
    smaller subnets are already trained on its leading channels; sorting would change them)."""

    @model_validator(mode="after")
    def _timm_options_need_from_timm(self) -> SupernetSection:
        if self.from_timm is None and (self.pretrained or self.weights is not None):
            raise ValueError("supernet.pretrained and supernet.weights need supernet.from_timm")
        if self.from_timm is not None and self.mos is not None:
            raise ValueError("supernet.mos is not available with supernet.from_timm")
        if self.from_ofa is not None and (self.from_timm is not None or self.mos is not None):
            raise ValueError("supernet.from_ofa takes neither supernet.from_timm nor supernet.mos")
        return self


def build_supernet(section: SupernetSection, *, num_classes: int, in_chans: int):
    """The supernet a train config describes (also what a resumed run rebuilds)."""
    import supernets
    from supernets.timm_bridge import from_timm

    if section.from_ofa is not None:
        net = _ofa_supernet(section, num_classes, in_chans)
    elif section.from_timm is None:
        return supernets.create(section.family, num_classes=num_classes, in_chans=in_chans,
                                width_mult=section.width_mult, preset=section.preset,
                                mos=section.mos, **section.kwargs)
    else:
        net = from_timm(_timm_model(section, num_classes, in_chans), **section.kwargs)
    reorder = section.reorder_channels
    if reorder if reorder is not None else section.from_ofa is None:
        net.reorder_channels()
    return net


def _ofa_supernet(section: SupernetSection, num_classes: int, in_chans: int):
    """OFA's supernet from its checkpoint, the head sized for the data (family checked only
    when the config names one)."""
    from nasbench_core.errors import UserError
    from supernets.ofa_bridge import from_ofa

    family = section.family if "family" in section.model_fields_set else None
    net = from_ofa(section.from_ofa, family=family, num_classes=num_classes, **section.kwargs)
    have = net.build_config()["in_chans"]
    if have != in_chans:
        raise UserError(f"the OFA supernet in {section.from_ofa} takes {have}-channel images; "
                        f"the data has {in_chans}: set data.channels={have}")
    return net


def _timm_model(section: SupernetSection, num_classes: int, in_chans: int):
    """The timm model with its weights, its classifier sized for the data."""
    from torch import nn

    from nasbench_core.errors import UserError
    from supernets.timm_bridge import create_timm_model

    keeps_stem = section.pretrained or section.weights is not None
    model = create_timm_model(section.from_timm, section.pretrained,
                         None if keeps_stem else num_classes, None if keeps_stem else in_chans)
    if section.weights is not None:
        from nasbench.runners.prune import _read_weights
        from supernets.timm_bridge import load_timm_state

        load_timm_state(model, _read_weights(section.weights, "supernet.weights"),
                        f"supernet.weights={str(section.weights)!r}", section.from_timm)
    if keeps_stem:
        have = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        if have != in_chans:
            raise UserError(f"the weights of {section.from_timm!r} take {have}-channel images; the "
                            f"data has {in_chans}: set data.channels={have}")
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
    return model


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
        try:
            hparams, teacher = train_settings(self.train)
        except ConfigError as exc:  # say when a default (not the user's value) is in the way
            if "warmup_epochs" in self.train or not str(exc).startswith("train.warmup_epochs:"):
                raise
            raise ConfigError(f"{exc}, the recipe's default: set train.warmup_epochs lower "
                              "(e.g. 0) or train more epochs") from None
        if hparams.epochs > MAX_EPOCHS:
            raise ConfigError(f"train.epochs: expected at most {MAX_EPOCHS}, got {hparams.epochs}")
        section = self.supernet
        if hparams.distill_from_initial and not (section.pretrained or section.weights is not None
                                                 or section.from_ofa is not None):
            raise ConfigError("train.distill_from_initial (set by recipe "
                              f"{hparams.recipe!r}) distils from the pretrained model: set "
                              "supernet.from_timm with pretrained: true or weights, or "
                              "supernet.from_ofa")
        if hparams.distill_from_initial and teacher is not None:
            raise ConfigError("train.teacher and train.distill_from_initial both pick the "
                              "distillation targets; keep one")
        if hparams.zero_init_residual and (section.pretrained or section.weights is not None
                                           or section.from_ofa is not None):
            raise ConfigError("train.zero_init_residual (set by recipe "
                              f"{hparams.recipe!r}) would erase the imported supernet weights; "
                              "set train.zero_init_residual: false")
        if hparams.pada is not None and hparams.pada["data"] and self.runner == "ray":
            raise ConfigError("train.pada.data draws examples with its own sampler, which a Ray "
                              "worker's distributed sampler excludes; set train.pada.data: false")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"key 'device': expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if hparams.resolution_mode == "data" and self.runner == "ray":
            raise ConfigError("train.resolution_mode: data is not available with runner: ray "
                              "(its workers build plain loaders); set train.resolution_mode: "
                              "tensor or use runner: local")
        if hparams.resolution_mode == "data" and hparams.pada is not None and hparams.pada["data"]:
            raise ConfigError("train.pada.data draws examples with its own sampler, which the "
                              "train.resolution_mode: data loader replaces; set one of them off "
                              "(train.pada.data: false or train.resolution_mode: tensor)")
        if self.runner == "ray" and hparams.checkpoint_every is not None:
            raise ConfigError("train.checkpoint_every is not available with runner: ray (Ray "
                              "Train checkpoints at epoch ends); remove it or use runner: local")
        return self


def run(config: TrainConfig, *, resume: Path | None = None, on_metrics: MetricsCallback | None = None) -> Run:
    """Build data and supernet from `config`, train locally or on Ray. `on_metrics` gets each
    epoch's row as it is logged (a notebook's live plot, a test's probe)."""
    from nasbench.data import load_dataset
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything

    cfg = config
    hparams, teacher_section = train_settings(cfg.train)
    device = _device(cfg.device)
    seed = cfg.run.seed
    seed_everything(seed)
    bundle = load_dataset(cfg.data, seed=seed)
    net = build_supernet(cfg.supernet, num_classes=bundle.num_classes, in_chans=bundle.in_chans)
    data_cfg = cfg.data
    if data_cfg.resolution is None and "resolution" in net.space:
        # Feed the largest resolution; smaller archs downsample it (prepare_input).
        largest = int(net.space.largest()["resolution"])
        data_cfg = data_cfg.model_copy(update={"resolution": largest})
        if bundle.resolution != largest:
            bundle = load_dataset(data_cfg, seed=seed)
    from supernets.training.planners import build_planner

    build_planner(hparams, net.space)  # the sampling recipe fits the space (one line if not)
    teacher = None
    if teacher_section is not None:  # built before the run directory: a bad teacher is one line
        from nasbench.teacher import build_teacher

        teacher = build_teacher(
            teacher_section, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
            recal_loader=bundle.loader(bundle.calibration_dataset, shuffle=False),
            recal_batches=hparams.bn_recal_batches)

    with start_run("train", cfg.model_dump(mode="json"), seed, root=cfg.run.root,
                   name=cfg.run.name, resume=resume,
                   check_resume=lambda run: _check_resumable(run, net, cfg.runner, hparams,
                                                             bundle)) as run:
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
            history = _train_ray(cfg, run.path, net, data_cfg, hparams, log, teacher)
            run.replace_metrics(history)  # the final checkpoint's rows, earlier attempts' too
        else:
            if resume is not None:  # rows the checkpoint has and metrics.csv may lack
                run.replace_metrics(_checkpointed_rows(run.checkpoints))
            history = _train_local(net, bundle, hparams, device, run.checkpoints, resume, log,
                                   teacher)
        final = history[-1] if history else {}
        run.update_manifest(
            checkpoint=str(run.checkpoints.relative_to(run.path)),
            final={k: v for k, v in final.items() if k.startswith(("val_acc", "loss_"))},
        )
        echo(f"trained {len(history)} epochs -> {run.path}")
        return run


def train_settings(train: dict[str, Any]):
    """The `train` section as (TrainHParams, TeacherSection or None): `teacher` is a nasbench
    concern (it loads models), the rest goes to the library's hparams."""
    from nasbench.teacher import parse_teacher
    from supernets.train import TrainHParams

    rest = {k: v for k, v in train.items() if k != "teacher"}
    teacher = parse_teacher(train["teacher"]) if "teacher" in train else None
    return TrainHParams.from_dict(rest, prefix="train."), teacher


def _train_local(net, bundle, hparams, device, checkpoint_dir, resume, log, teacher=None) -> list[dict]:
    from supernets.train import train_supernet

    steps = _local_steps_per_epoch(bundle, hparams)
    if resume is not None:
        _announce_epochs_change(checkpoint_dir, hparams, steps)
    train_loader, val_loader, recal_loader = _loaders(net, bundle, hparams)
    result = train_supernet(
        net,
        _TrackedLoader(train_loader, steps),
        val_loader,
        hparams,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume is not None,
        on_metrics=log,
        arch_sampler_seed=bundle.seed,
        recal_loader=recal_loader,
        teacher=teacher,
    )
    return result.history


def _loaders(net, bundle, hparams) -> tuple[Any, Any, Any]:
    """(train, val, BN recalibration) loaders. Recalibration reads a fixed, unshuffled,
    unaugmented slice of the training set: the same BN statistics every epoch. In data mode
    (and a space with a resolution) each is loaded at the sizes the archs need (`resample`)."""
    from supernets.training.resolution import resolution_choices

    choices = resolution_choices(net.space)
    if hparams.resolution_mode != "data" or not choices:
        return (bundle.train_loader, bundle.val_loader,
                bundle.loader(bundle.calibration_dataset, shuffle=False))
    from nasbench.data.resample import ResolutionLoader, StepResolutionLoader

    bundle = bundle.with_resolution_mode("data")
    return (StepResolutionLoader(bundle, choices), ResolutionLoader(bundle, lambda b: b.val_dataset),
            ResolutionLoader(bundle, lambda b: b.calibration_dataset))


def _train_ray(cfg: TrainConfig, run_path: Path, net, data_cfg, hparams, log, teacher=None
               ) -> list[dict]:
    from nasbench.distributed.train import RayScaling, train_on_ray

    initial = None
    if cfg.supernet.from_timm or cfg.supernet.from_ofa:  # workers rebuild: hand them weights
        from safetensors.torch import save_file

        from nasbench_core.atomic import atomic_path

        initial = run_path / "initial.safetensors"
        with atomic_path(initial) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
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
        initial_weights=initial,
        teacher=teacher,
    )
    return outcome.history


def _local_steps_per_epoch(bundle, hparams) -> int:
    steps = len(bundle.train_dataset) // bundle.batch_size + bool(
        len(bundle.train_dataset) % bundle.batch_size)
    return steps if hparams.max_steps_per_epoch is None else min(steps, hparams.max_steps_per_epoch)


def _check_resumable(run: Run, net, runner: str, hparams, bundle) -> None:
    """What a resume reads, checked before the run is reopened: the newest checkpoint (see
    `verify_checkpoint`), its settings against this config's (local runs; Ray workers check
    their own steps), and, on Ray, metrics.csv (appended to; a local resume rewrites it from
    the checkpoint instead)."""
    from supernets.checkpoint import latest_checkpoint, read_checkpoint_meta, verify_checkpoint
    from supernets.training.loop import check_resumable

    stem = latest_checkpoint(run.path / "checkpoints")
    if stem is not None:
        verify_checkpoint(stem, net)
        if runner != "ray":
            check_resumable(stem, read_checkpoint_meta(stem), hparams, bundle.seed,
                            _local_steps_per_epoch(bundle, hparams))
    if runner == "ray":
        _ = run.metrics  # read for its one-line error


def _checkpointed_rows(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows the newest checkpoint holds (none before the first checkpoint)."""
    from supernets.checkpoint import latest_checkpoint, read_checkpoint_meta

    stem = latest_checkpoint(checkpoint_dir)
    return [] if stem is None else list(read_checkpoint_meta(stem)["history"])


def _announce_epochs_change(checkpoint_dir: Path, hparams, steps: int) -> None:
    from nasbench.progress import echo
    from supernets.checkpoint import latest_checkpoint, read_checkpoint_meta
    from supernets.training.loop import epochs_change

    stem = latest_checkpoint(checkpoint_dir)
    if stem is not None and (line := epochs_change(read_checkpoint_meta(stem), hparams, steps)):
        echo(line)


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
        return self._tracked(iter(self.loader), self.steps)

    def iter_from(self, skip: int, before_first: Callable[[], None]) -> Iterator[Any]:
        """The pass after its first `skip` batches (a mid-epoch resume, see `batches_from`)."""
        from supernets.training.position import batches_from

        return self._tracked(batches_from(self.loader, skip, before_first), self.steps - skip)

    @staticmethod
    def _tracked(batches: Iterator[Any], steps: int) -> Iterator[Any]:
        from nasbench.progress import track

        # The training loop stops after `steps` batches without asking for more, so the bar is
        # driven by its own ticks and finished before the last batch is handed over.
        ticks = iter(track(range(steps), "training", total=steps))
        for i, batch in enumerate(islice(batches, steps)):
            next(ticks, None)
            if i == steps - 1:
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
