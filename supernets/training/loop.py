"""`train_supernet`: the one training function, used in-process and inside Ray Train workers.

BigNAS sandwich rule with in-place distillation (or single-path uniform sampling), one
optimizer step per sandwich, a per-step lr schedule, checkpoints every epoch and exact
resume. Free of Ray: distributed callers pass `ddp_wrap` and shard the loaders themselves.
Recipe hooks (zero-init, per-member dropout/drop-path) live in `regularize`; an external
teacher is any frozen module passed as `teacher`.
"""

from __future__ import annotations

import math
import time
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
from supernets.base import prepare_input
from supernets.checkpoint import (
    epoch_stem,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from supernets.space import Arch
from supernets.training.hparams import TrainHParams
from supernets.training.optim import build_optimizer, build_scheduler, lr_factor
from supernets.training.regularize import MemberRegularization, zero_init_residual_
from supernets.training.rng import capture_rng, loader_generators, restore_rng
from supernets.training.sampling import Member, step_plan

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
    `teacher` (a module mapping the batch to logits) is frozen and put in eval mode; its logits
    replace the largest subnet's as the distillation target of the other members, while the
    largest keeps learning from the labels.
    """
    device = torch.device(device)
    net.to(device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    use_amp = amp_dtype is not None
    steps_per_epoch = _steps_per_epoch(train_loader, cfg)
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
    if stem is not None:
        meta = load_checkpoint(stem, net, optimizer, scheduler)
        _check_resumable(stem, meta, cfg, arch_sampler_seed, steps_per_epoch)
        if scaler.is_enabled() and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        restore_rng(meta["rng"], generators)
        result = TrainResult(
            epochs_completed=meta["epoch"],
            global_step=meta["global_step"],
            history=list(meta["history"]),
            checkpoint=stem,
            resumed_from=stem,
        )

    regularization = MemberRegularization(net, cfg)
    ctx = StepContext(model, net, optimizer, scheduler, scaler, cfg, device, use_amp,
                      amp_dtype or torch.float16, teacher, regularization)
    try:
        _train_epochs(ctx, result, train_loader, val_loader, recal_loader, steps_per_epoch,
                      arch_sampler_seed, ckpt_dir, generators, on_metrics, on_progress)
    finally:
        regularization.restore()
    return result


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
    ckpt_dir: Path | None, generators: Any, on_metrics: MetricsFn | None,
    on_progress: ProgressFn | None,
) -> None:
    """The epochs from `result.epochs_completed` on: train, validate, checkpoint, report."""
    net, cfg, device = ctx.net, ctx.cfg, ctx.device
    optimizer, scheduler, scaler = ctx.optimizer, ctx.scheduler, ctx.scaler
    for epoch in range(result.epochs_completed, cfg.epochs):
        row = _train_epoch(ctx, train_loader, epoch, steps_per_epoch, result.global_step,
                           arch_sampler_seed, on_progress)
        result.global_step += row.pop("steps")
        row.update(
            _validate(net, val_loader, recal_loader or train_loader, cfg, device)
            if val_loader is not None
            else {}
        )
        result.epochs_completed = epoch + 1
        result.history.append(row)
        if ckpt_dir is not None and _is_main_process():
            result.checkpoint = save_checkpoint(
                epoch_stem(ckpt_dir, epoch + 1), net, optimizer, scheduler,
                meta={
                    "epoch": epoch + 1,
                    "global_step": result.global_step,
                    "hparams": cfg.to_dict(),
                    "arch_sampler_seed": arch_sampler_seed,
                    "steps_per_epoch": steps_per_epoch,
                    "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "history": result.history,
                    "rng": capture_rng(generators),
                },
            )
            prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        if on_metrics is not None:
            on_metrics(dict(row))


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
    input resized the same way, so an exported subnet can be checked against the table.
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
        for x, y in islice(loader, max_batches):
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
    if ctx.teacher is not None:
        with torch.no_grad(), _autocast(ctx):
            target = ctx.teacher(x).float()
    losses: dict[str, list[torch.Tensor]] = {}
    no_sync = getattr(ctx.model, "no_sync", None)  # DDP: accumulate locally, reduce once
    for i, member in enumerate(members):
        ctx.net.set_active(member.arch)
        if ctx.regularization is not None:
            ctx.regularization.apply(member.arch)
        quiet = no_sync() if no_sync is not None and i < len(members) - 1 else nullcontext()
        with quiet:
            with _autocast(ctx):
                logits = ctx.model(prepare_input(x, member.arch))
            logits = logits.float()
            if member.role == "largest" or (member.role == "uniform" and ctx.teacher is None):
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            else:
                loss = distill_loss(logits, target, cfg.distill_temperature)
            ctx.scaler.scale(loss).backward()
        if member.role == "largest" and ctx.teacher is None:
            target = logits.detach()
        losses.setdefault(member.role, []).append(loss.detach())
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
    first_step: int,
    seed: int,
    on_progress: ProgressFn | None,
) -> dict[str, Any]:
    cfg = ctx.cfg
    ctx.net.train()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    images = steps = 0
    lr = ctx.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    for x, y in islice(loader, steps_per_epoch):
        x = x.to(ctx.device, non_blocking=True)
        y = y.to(ctx.device, non_blocking=True)
        members = step_plan(ctx.net.space, cfg.sampling, cfg.num_random, seed, first_step + steps)
        lr = ctx.optimizer.param_groups[0]["lr"]
        for role, values in train_step(ctx, x, y, members).items():
            sums[role] = sums.get(role, 0.0) + torch.stack(values).sum()
            counts[role] = counts.get(role, 0) + len(values)
        images += y.shape[0]
        steps += 1
        if on_progress is not None:
            on_progress(epoch, steps, steps_per_epoch)
    elapsed = time.perf_counter() - start
    if steps == 0:
        raise UserError("the training data loader yielded no batches; check the dataset and batch size")
    row: dict[str, Any] = {"epoch": epoch + 1, "step": first_step + steps, "steps": steps, "lr": lr}
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


def _check_resumable(stem: Path, meta: dict, cfg: TrainHParams, seed: int, steps: int) -> None:
    # Keys a checkpoint lacks were added later: it trained with their defaults.
    saved = {**TrainHParams().to_dict(), **meta.get("hparams", {})}
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if saved.get(k) != v and k not in EXTENDABLE)
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
