"""`train_supernet`: the one training function, used in-process and inside Ray Train workers.

BigNAS sandwich rule with in-place distillation (or single-path uniform sampling), one
optimizer step per sandwich, per-step warmup+cosine, checkpoints every epoch and exact
resume. Free of Ray: distributed callers pass `ddp_wrap` and shard the loaders themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
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
from supernets.training.optim import build_optimizer, build_scheduler
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
) -> TrainResult:
    """Train `net` (a Supernet) for `cfg.epochs`; returns a TrainResult.

    `on_metrics(row)` gets one row per epoch (per-member losses, val acc of smallest and
    largest, lr, images/s); `on_progress(epoch, step, steps_per_epoch)` after every step.
    `ddp_wrap(net)` may wrap the net for DDP; archs are drawn from (arch_sampler_seed, step),
    so every worker trains the same subnets. Checkpoints are written by rank 0 only.
    """
    device = torch.device(device)
    net.to(device)
    model = ddp_wrap(net) if ddp_wrap is not None else net
    steps_per_epoch = _steps_per_epoch(train_loader, cfg)
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generators = loader_generators(train_loader)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    result = TrainResult(epochs_completed=0, global_step=0)
    if resume and ckpt_dir is not None and (stem := latest_checkpoint(ckpt_dir)) is not None:
        meta = load_checkpoint(stem, net, optimizer, scheduler)
        _check_resumable(stem, meta, cfg, arch_sampler_seed, steps_per_epoch)
        if use_amp and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        restore_rng(meta["rng"], generators)
        result = TrainResult(
            epochs_completed=meta["epoch"],
            global_step=meta["global_step"],
            history=list(meta["history"]),
            checkpoint=stem,
            resumed_from=stem,
        )

    ctx = StepContext(model, net, optimizer, scheduler, scaler, cfg, device, use_amp)
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
                    "grad_scaler": scaler.state_dict() if use_amp else None,
                    "history": result.history,
                    "rng": capture_rng(generators),
                },
            )
            prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        if on_metrics is not None:
            on_metrics(dict(row))
    return result


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
    if isinstance(net, Supernet):
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
    use_amp: bool


def train_step(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, members: list[Member]) -> dict:
    """One optimizer step over `members` (teacher first); returns detached losses by role."""
    cfg = ctx.cfg
    ctx.optimizer.zero_grad(set_to_none=True)
    teacher: torch.Tensor | None = None
    losses: dict[str, list[torch.Tensor]] = {}
    for member in members:
        ctx.net.set_active(member.arch)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.use_amp):
            logits = ctx.model(prepare_input(x, member.arch))
        logits = logits.float()
        if member.learns_from_labels:
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        else:
            loss = distill_loss(logits, teacher, cfg.distill_temperature)
        ctx.scaler.scale(loss).backward()
        if member.role == "largest":
            teacher = logits.detach()
        losses.setdefault(member.role, []).append(loss.detach())
    if cfg.grad_clip is not None:
        ctx.scaler.unscale_(ctx.optimizer)
        nn.utils.clip_grad_norm_(ctx.net.parameters(), cfg.grad_clip)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.scheduler.step()
    return losses


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
    from supernets.training.optim import warmup_cosine

    old, new, done = int(meta.get("hparams", {}).get("epochs", cfg.epochs)), cfg.epochs, int(meta["epoch"])
    if old == new:
        return None
    if new < done:
        raise CheckpointError(f"cannot resume: the run has trained {done} epochs, more than "
                              f"train.epochs={new}")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    step = int(meta.get("global_step", done * steps_per_epoch))
    before = warmup_cosine(old * steps_per_epoch, warmup, cfg.min_lr_ratio)(step)
    after = warmup_cosine(new * steps_per_epoch, warmup, cfg.min_lr_ratio)(step)
    return (f"train.epochs {old} -> {new}: the schedule is stretched to {new} epochs from epoch "
            f"{done}; the lr multiplier at the resume point goes from {before:.3g} to {after:.3g}")


def _check_resumable(stem: Path, meta: dict, cfg: TrainHParams, seed: int, steps: int) -> None:
    saved = meta.get("hparams", {})
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
