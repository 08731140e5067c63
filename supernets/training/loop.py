"""`train_supernet`: the one training function, used in-process and inside Ray Train workers.

BigNAS sandwich rule with in-place distillation (or single-path uniform sampling), one
optimizer step per sandwich, a per-step lr schedule, checkpoints every epoch (and every
`checkpoint_every` steps) and exact resume, mid-epoch too. Free of Ray: distributed callers
pass `ddp_wrap` and shard the loaders themselves.
Recipe hooks (zero-init, per-member dropout/drop-path) live in `regularize`; an external
teacher is any frozen module passed as `teacher`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasbench_core.errors import CheckpointError, UserError
from supernets.base import batches_for, prepare_input
from supernets.checkpoint import (
    epoch_stem,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_stem,
)
from supernets.space import Arch
from supernets.training.hparams import TrainHParams
from supernets.training.instatune import InitialTeacher
from supernets.training.optim import build_optimizer, build_scheduler, lr_factor
from supernets.training.planners import StepPlanner, build_planner
from supernets.training.position import batches_from
from supernets.training.regularize import MemberRegularization, zero_init_residual_
from supernets.training.resolution import (
    member_input,
    resolution_choices,
    step_resolution,
    with_step_resolution,
)
from supernets.training.rng import capture_rng, loader_generators, restore_rng
from supernets.training.sampling import Member, step_plan
from supernets.training.sync_bn import synced_batchnorm

MetricsFn = Callable[[dict[str, Any]], None]
ProgressFn = Callable[[int, int, int], None]


@dataclass
class TrainResult:
    """What a call trained: epochs done in total, last checkpoint, one metrics row per epoch."""

    epochs_completed: int
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    resumed_from: Path | None = None


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (in-place distillation)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def train_supernet(
    net: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    cfg: TrainHParams,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_metrics: MetricsFn | None = None,
    on_progress: ProgressFn | None = None,
    arch_sampler_seed: int = 0,
    ddp_wrap: Callable[[nn.Module], nn.Module] | None = None,
    recal_loader: Iterable | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train `net` (a Supernet) for `cfg.epochs`; returns a TrainResult.

    `on_metrics(row)` gets one row per epoch (per-member losses, val acc of smallest and
    largest, lr, images/s); `on_progress(epoch, step, steps_per_epoch)` after every step.
    `ddp_wrap(net)` may wrap the net for DDP; archs are drawn from (arch_sampler_seed, step),
    so every worker trains the same subnets. Checkpoints are written by rank 0 only.
    `cfg.sync_bn` syncs BN statistics when `ddp_wrap` is given and the process group has more
    than one process; otherwise it warns and does nothing.
    `teacher` (a module mapping the batch to logits) is frozen and put in eval mode; its logits
    replace the largest subnet's as the distillation target of the other members, while the
    largest keeps learning from the labels.
    """
    device = torch.device(device)
    net.to(device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    use_amp = amp_dtype is not None
    steps_per_epoch = _steps_per_epoch(train_loader, cfg)
    planner = build_planner(cfg, net.space)  # recipe sampling hook (training.planners)
    train_loader = planner.wrap_loader(train_loader)
    if teacher is None and cfg.distill_from_initial:  # InstaTune: the starting weights teach
        teacher = InitialTeacher(net)
    generators = loader_generators(train_loader)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stem = latest_checkpoint(ckpt_dir) if resume and ckpt_dir is not None else None
    if stem is None and cfg.zero_init_residual:
        zero_init_residual_(net)  # a fresh start only: a resumed run loads its trained weights
    model = ddp_wrap(net) if ddp_wrap is not None else net
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)

    result = TrainResult(epochs_completed=0, global_step=0)
    partial: EpochProgress | None = None
    if stem is not None:
        meta = load_checkpoint(stem, net, optimizer, scheduler)
        check_resumable(stem, meta, cfg, arch_sampler_seed, steps_per_epoch)
        if scaler.is_enabled() and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        if meta.get("in_epoch"):  # mid-epoch: re-draw the epoch's order, the rest follows
            partial = EpochProgress.from_meta(meta, device)
            restore_rng(partial.epoch_rng, generators)
        else:
            restore_rng(meta["rng"], generators)
        planner.load_state_dict(meta.get("planner", {}))
        result = TrainResult(
            epochs_completed=meta["epoch"],
            global_step=meta["global_step"],
            history=list(meta["history"]),
            checkpoint=stem,
            resumed_from=stem,
        )

    regularization = MemberRegularization(net, cfg)
    ctx = StepContext(model, net, optimizer, scheduler, scaler, cfg, device, use_amp,
                      amp_dtype or torch.float16, teacher, regularization, planner)
    saver = Checkpointer(ckpt_dir, arch_sampler_seed, steps_per_epoch, generators)
    try:
        with synced_batchnorm(net, _sync_bn(cfg, ddp_wrap)):
            _train_epochs(ctx, result, train_loader, val_loader, recal_loader, steps_per_epoch,
                          arch_sampler_seed, saver, partial, on_metrics, on_progress)
    finally:
        regularization.restore()
    return result


def _sync_bn(cfg: TrainHParams, ddp_wrap: Callable | None) -> bool:
    """Whether BN syncs: `cfg.sync_bn` under DDP with more than one process (else a warning)."""
    if not cfg.sync_bn:
        return False
    dist = torch.distributed
    if ddp_wrap is not None and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1:
        return True
    warnings.warn("train.sync_bn has no effect: training runs in one process (no DDP group)",
                  stacklevel=3)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: no autocast, fp32).
    `auto` is fp16 on CUDA and fp32 elsewhere; fp16 also gets a GradScaler (see the loop)."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no "
                        "bfloat16 support; use fp16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _train_epochs(
    ctx: StepContext, result: TrainResult, train_loader: Iterable, val_loader: Iterable | None,
    recal_loader: Iterable | None, steps_per_epoch: int, arch_sampler_seed: int,
    saver: Checkpointer, partial: EpochProgress | None, on_metrics: MetricsFn | None,
    on_progress: ProgressFn | None,
) -> None:
    """The epochs from `result.epochs_completed` on (the first from `partial`'s step when
    resumed mid-epoch): train, validate, checkpoint, report. The epoch's metrics row is in the
    checkpoint's history before `on_metrics` sees it: a crash between the two loses no row,
    the runner rebuilds its metrics file from the checkpoint."""
    net, cfg, device = ctx.net, ctx.cfg, ctx.device
    for epoch in range(result.epochs_completed, cfg.epochs):
        progress = partial or EpochProgress(capture_rng(saver.generators),
                                            copy.deepcopy(_planner_state(ctx)))
        partial = None
        row = _train_epoch(ctx, train_loader, epoch, steps_per_epoch, result,
                           arch_sampler_seed, on_progress, progress, saver)
        row.update(
            _validate(net, val_loader, recal_loader or train_loader, cfg, device)
            if val_loader is not None
            else {}
        )
        result.epochs_completed = epoch + 1
        result.history.append(row)
        saver.save(ctx, result, epoch_stem)
        if on_metrics is not None:
            on_metrics(dict(row))


@dataclass
class EpochProgress:
    """How far an epoch got: steps and images, loss sums per role, time, and the RNG and planner
    states of its start (they re-draw its data order). A mid-epoch checkpoint stores it as
    `in_epoch`; resuming restores `resume_rng` (the RNG at the checkpoint) right before the
    next batch is loaded and `resume_planner` after the epoch's `begin_epoch`."""

    epoch_rng: dict[str, Any]
    epoch_planner: dict[str, Any]
    steps: int = 0
    images: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    lr: float | None = None
    resume_rng: dict[str, Any] | None = None
    resume_planner: dict[str, Any] | None = None

    def to_meta(self) -> dict[str, Any]:
        return {"steps": self.steps, "images": self.images, "elapsed_s": self.elapsed,
                "lr": self.lr, "sums": {k: float(v) for k, v in self.sums.items()},
                "counts": dict(self.counts), "epoch_rng": self.epoch_rng,
                "epoch_planner": self.epoch_planner}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], device: torch.device) -> EpochProgress:
        """From a mid-epoch checkpoint's JSON: float32 loss sums round-trip exactly."""
        part = meta["in_epoch"]
        sums = {k: torch.tensor(v, dtype=torch.float32, device=device)
                for k, v in part["sums"].items()}
        return cls(part["epoch_rng"], part["epoch_planner"], int(part["steps"]),
                   int(part["images"]), sums, dict(part["counts"]), float(part["elapsed_s"]),
                   part["lr"], meta["rng"], meta.get("planner", {}))


@dataclass
class Checkpointer:
    """Writes the run's checkpoints (rank 0 only) and prunes old ones."""

    directory: Path | None
    arch_sampler_seed: int
    steps_per_epoch: int
    generators: list[torch.Generator]

    def save(self, ctx: StepContext, result: TrainResult, stem: Callable[..., Path],
             progress: EpochProgress | None = None) -> None:
        """A checkpoint of `result`'s state; with `progress`, a mid-epoch one."""
        if self.directory is None or not _is_main_process():
            return
        cfg, scaler = ctx.cfg, ctx.scaler
        meta = {
            "epoch": result.epochs_completed,
            "global_step": result.global_step,
            "hparams": cfg.to_dict(),
            "arch_sampler_seed": self.arch_sampler_seed,
            "steps_per_epoch": self.steps_per_epoch,
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "history": result.history,
            "rng": capture_rng(self.generators),
            "planner": _planner_state(ctx),
        }
        where: tuple[int, ...] = (result.epochs_completed,)
        if progress is not None:
            meta["in_epoch"] = progress.to_meta()
            where += (progress.steps,)
        result.checkpoint = save_checkpoint(stem(self.directory, *where), ctx.net, ctx.optimizer,
                                            ctx.scheduler, meta=meta)
        prune_checkpoints(self.directory, cfg.keep_checkpoints)


def _planner_state(ctx: StepContext) -> dict[str, Any]:
    return ctx.planner.state_dict() if ctx.planner is not None else {}


def evaluate_arch(
    net: nn.Module,
    arch: Arch,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    recal_loader: Iterable | None = None,
    recal_batches: int = 10,
    max_batches: int | None = None,
) -> float:
    """Top-1 accuracy of `arch` (BN recalibrated on `recal_loader` first, when given).

    `net` is a supernet (set to `arch` first) or the subnet extracted at `arch`: both see the
    input resized the same way, so an exported subnet can be checked against the table. A
    loader with `at_resolution` (data mode) gives its samples resampled at the arch's
    resolution; any other is interpolated to it (`prepare_input`).
    """
    from supernets import recalibrate_bn
    from supernets.base import Supernet

    device = torch.device(device)
    was_training = net.training
    if isinstance(net, Supernet) or hasattr(net, "set_active"):  # also search.joint's pruned subnets
        net.set_active(arch)
    if recal_loader is not None:
        recalibrate_bn(net, recal_loader, recal_batches, arch=arch)
    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in islice(batches_for(loader, arch), max_batches):
            x, y = x.to(device), y.to(device)
            pred = net(prepare_input(x, arch)).argmax(dim=-1)
            correct += int((pred == y).sum())
            total += y.numel()
    net.train(was_training)
    return correct / max(total, 1)


# -- internals -------------------------------------------------------------------------------
@dataclass
class StepContext:
    """What one training step needs; `model` may be the DDP wrapper of `net`."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    cfg: TrainHParams
    device: torch.device
    use_amp: bool  # autocast on, in `amp_dtype`
    amp_dtype: torch.dtype = torch.float16
    teacher: nn.Module | None = None  # external, frozen: its logits are the KD targets
    regularization: MemberRegularization | None = None
    planner: StepPlanner | None = None  # None: plain `step_plan` (sandwich / uniform)


def train_step(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, members: list[Member]) -> dict:
    """One optimizer step over `members` (largest first); returns detached losses by role.

    Under DDP the members' gradients accumulate locally (`no_sync`) and the last backward
    all-reduces them once: one all-reduce per step instead of one per member.

    The largest learns from the labels (label-smoothed); the others distill from the external
    teacher's logits when there is one, else from the largest's (in-place distillation). A
    `uniform` member learns from the labels, or from the external teacher when there is one.
    """
    cfg = ctx.cfg
    ctx.optimizer.zero_grad(set_to_none=True)
    target: torch.Tensor | None = None
    if ctx.teacher is not None:  # at the largest resolution of a data-mode batch
        with torch.no_grad(), _autocast(ctx):
            target = ctx.teacher(member_input(x, {})).float()
    losses: dict[str, list[torch.Tensor]] = {}
    no_sync = getattr(ctx.model, "no_sync", None)  # DDP: accumulate locally, reduce once
    for i, member in enumerate(members):
        ctx.net.set_active(member.arch)
        if ctx.regularization is not None:
            ctx.regularization.apply(member.arch)
        quiet = no_sync() if no_sync is not None and i < len(members) - 1 else nullcontext()
        with quiet:
            with _autocast(ctx):
                logits = ctx.model(prepare_input(member_input(x, member.arch), member.arch))
            logits = logits.float()
            if member.role == "largest" or (member.role == "uniform" and ctx.teacher is None):
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            else:
                loss = distill_loss(logits, target, cfg.distill_temperature)
            ctx.scaler.scale(loss).backward()
        if member.role == "largest" and ctx.teacher is None:
            target = logits.detach()
        losses.setdefault(member.role, []).append(loss.detach())
    if ctx.planner is not None:  # recipe hook: what the step saw, before clipping
        ctx.planner.observe(ctx, members, logits.detach(), y)
    if cfg.grad_clip is not None:
        ctx.scaler.unscale_(ctx.optimizer)
        nn.utils.clip_grad_norm_(ctx.net.parameters(), cfg.grad_clip)
    if optimizer_step(ctx.scaler, ctx.optimizer):
        ctx.scheduler.step()
    return losses


def optimizer_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """`scaler.step` + `update`; False when the scaler skipped the step (inf/nan gradients), so
    the caller leaves the lr schedule where it is. A skip is what lowers the scale: `update`
    never lowers it otherwise."""
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    return before is None or scaler.get_scale() >= before


def _autocast(ctx: StepContext) -> torch.autocast:
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.use_amp)


def _train_epoch(
    ctx: StepContext,
    loader: Iterable,
    epoch: int,
    steps_per_epoch: int,
    result: TrainResult,
    seed: int,
    on_progress: ProgressFn | None,
    progress: EpochProgress,
    saver: Checkpointer,
) -> dict[str, Any]:
    """Train `epoch` from `progress.steps` on, advancing `result.global_step`; checkpoint every
    `cfg.checkpoint_every` steps (not on the epoch's last: its checkpoint follows validation)."""
    cfg, p = ctx.cfg, progress
    ctx.net.train()
    first_step = result.global_step - p.steps
    if ctx.planner is not None:
        if p.resume_planner is not None:
            ctx.planner.load_state_dict(p.epoch_planner)
        ctx.planner.begin_epoch(epoch, seed)
        if p.resume_planner is not None:
            ctx.planner.load_state_dict(p.resume_planner)
    begin_epoch = getattr(loader, "begin_epoch", None)
    if callable(begin_epoch):  # a data-mode loader: each step's sizes from (seed, epoch, step)
        begin_epoch(epoch, seed)
    choices = resolution_choices(ctx.net.space) if cfg.resolution_mode == "data" else []
    if p.resume_rng is not None:
        resume_rng = p.resume_rng
        batches = batches_from(loader, p.steps, lambda: restore_rng(resume_rng))
    else:
        batches = iter(loader)
    lr = p.lr if p.lr is not None else ctx.optimizer.param_groups[0]["lr"]
    start = time.perf_counter() - p.elapsed
    for x, y in islice(batches, steps_per_epoch - p.steps):
        x = _to_device(x, ctx.device)
        y = y.to(ctx.device, non_blocking=True)
        step = first_step + p.steps
        members = (step_plan(ctx.net.space, cfg.sampling, cfg.num_random, seed, step)
                   if ctx.planner is None
                   else ctx.planner.plan(ctx, member_input(x, {}), y, seed, step, epoch))
        if choices:
            members = with_step_resolution(members, choices,
                                           step_resolution(choices, seed, epoch, p.steps))
        lr = ctx.optimizer.param_groups[0]["lr"]
        for role, values in train_step(ctx, x, y, members).items():
            p.sums[role] = p.sums.get(role, 0.0) + torch.stack(values).sum()
            p.counts[role] = p.counts.get(role, 0) + len(values)
        p.images += y.shape[0]
        p.steps += 1
        result.global_step = first_step + p.steps
        if cfg.checkpoint_every and result.global_step % cfg.checkpoint_every == 0 \
                and p.steps < steps_per_epoch:
            p.elapsed, p.lr = time.perf_counter() - start, lr
            saver.save(ctx, result, step_stem, p)
        if on_progress is not None:
            on_progress(epoch, p.steps, steps_per_epoch)
    elapsed = time.perf_counter() - start
    steps, images, sums, counts = p.steps, p.images, p.sums, p.counts
    if steps == 0:
        raise UserError("the training data loader yielded no batches; check the dataset and batch size")
    row: dict[str, Any] = {"epoch": epoch + 1, "step": first_step + steps, "lr": lr}
    for role in ("largest", "smallest", "random", "uniform"):
        if role in sums:
            value = float(sums[role]) / counts[role]
            if not math.isfinite(value):
                raise UserError(
                    f"training diverged in epoch {epoch + 1}: {role} loss is {value}; "
                    f"lower train.lr (now {cfg.lr}) or set train.grad_clip"
                )
            row[f"loss_{role}"] = value
    row["images_per_s"] = images / elapsed if elapsed > 0 else float("nan")
    row["epoch_time_s"] = elapsed
    return row


def _to_device(x: Any, device: torch.device) -> Any:
    """A batch tensor, or a data-mode batch ({size: tensor}), on `device`."""
    if isinstance(x, Mapping):
        return {r: t.to(device, non_blocking=True) for r, t in x.items()}
    return x.to(device, non_blocking=True)


def _validate(net, val_loader, recal_loader, cfg: TrainHParams, device) -> dict[str, float]:
    space = net.space
    out = {}
    for role, arch in (("smallest", space.smallest()), ("largest", space.largest())):
        out[f"val_acc_{role}"] = evaluate_arch(
            net, arch, val_loader, device=device, recal_loader=recal_loader,
            recal_batches=cfg.bn_recal_batches, max_batches=cfg.val_max_batches,
        )
    net.train()
    return out


def _steps_per_epoch(loader: Iterable, cfg: TrainHParams) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if cfg.max_steps_per_epoch is None:
            raise UserError(
                "the training loader has no length; set train.max_steps_per_epoch"
            ) from None
        return cfg.max_steps_per_epoch
    if n == 0:
        raise UserError("the training data loader is empty; check the dataset and batch size")
    return n if cfg.max_steps_per_epoch is None else min(n, cfg.max_steps_per_epoch)


EXTENDABLE = ("epochs",)
"""Settings a resume may change: more epochs stretch the schedule (see `epochs_change`)."""
BOOKKEEPING = ("checkpoint_every",)
"""Settings a resume may change freely: they decide what is saved, not what is trained."""


def epochs_change(meta: Mapping[str, Any], cfg: TrainHParams, steps_per_epoch: int) -> str | None:
    """What resuming a checkpoint (`meta`) with `cfg.epochs` does to the run, in one line; None
    when the epochs are unchanged. The cosine schedule is rebuilt for the new length, so the
    learning rate at the resume point changes: the line says by how much."""
    old, new, done = int(meta.get("hparams", {}).get("epochs", cfg.epochs)), cfg.epochs, int(meta["epoch"])
    if old == new:
        return None
    if new < done:
        raise CheckpointError(f"cannot resume: the run has trained {done} epochs, more than "
                              f"train.epochs={new}")
    step = int(meta.get("global_step", done * steps_per_epoch))
    before = lr_factor(cfg.replace(epochs=old), steps_per_epoch)(step)
    after = lr_factor(cfg, steps_per_epoch)(step)
    return (f"train.epochs {old} -> {new}: the schedule is stretched to {new} epochs from epoch "
            f"{done}; the lr multiplier at the resume point goes from {before:.3g} to {after:.3g}")


def check_resumable(stem: Path, meta: dict, cfg: TrainHParams, seed: int, steps: int) -> None:
    """Refuse, in one line, a resume whose settings differ from the checkpoint's (bar more
    epochs and bookkeeping): the runner calls it before reopening its run, the loop again."""
    # Keys a checkpoint lacks were added later: it trained with their defaults.
    saved = {**TrainHParams().to_dict(), **meta.get("hparams", {})}
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if saved.get(k) != v and k not in EXTENDABLE + BOOKKEEPING)
    epochs_change(meta, cfg, steps)  # refuses fewer epochs than the run already trained
    if changed:
        key = changed[0]
        raise CheckpointError(
            f"cannot resume from {stem}: train.{key} was {saved.get(key)!r}, now "
            f"{getattr(cfg, key)!r}; resume with the settings the run started with"
        )
    if meta.get("arch_sampler_seed") != seed:
        raise CheckpointError(
            f"cannot resume from {stem}: it sampled archs with seed {meta.get('arch_sampler_seed')}, "
            f"now {seed}"
        )
    if meta.get("steps_per_epoch") != steps:
        raise CheckpointError(
            f"cannot resume from {stem}: it had {meta.get('steps_per_epoch')} steps per epoch, "
            f"now {steps} (dataset or batch size changed)"
        )


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
