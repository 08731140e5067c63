"""Optimizer and per-step learning-rate schedule of the training recipe.

Norm and bias parameters get no weight decay (timm's grouping rule); the schedule is a linear
warmup followed by a cosine decay or an exponential decay with a constant ending (BigNAS),
stepped once per optimizer step, so resuming mid-run only needs the step counter.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from supernets.training.hparams import FLOOR_AT, TrainHParams


def build_optimizer(net: nn.Module, cfg: TrainHParams) -> torch.optim.Optimizer:
    """SGD (nesterov) or AdamW over two groups: decayed weights, undecayed norms and biases.

    Multi-tensor kernels on every device: AdamW's fused kernel took 0.6 ms a step on the tiny
    ViT against 2.2 ms for the per-tensor loop torch picks on CPU. SGD uses the foreach form,
    which (unlike the fused one) skips parameters that got no gradient this step.
    """
    skip = getattr(net, "no_weight_decay", lambda: ())()
    groups = param_groups_weight_decay(net, cfg.weight_decay, no_weight_decay_list=skip)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            foreach=True,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """lr multiplier at step s: linear ramp over `warmup_steps`, then cosine to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def warmup_exp(warmup_steps: int, steps_per_epoch: int, decay: float, floor: float):
    """lr multiplier at step s: linear ramp over `warmup_steps`, then
    `max(floor, decay ** ((s - warmup_steps) / steps_per_epoch))`: a factor `decay` per epoch
    (smoothly, per step) until the floor, which is then held to the end (the constant ending)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(floor, decay ** ((step - warmup_steps) / steps_per_epoch))

    return factor


def exp_decay(cfg: TrainHParams) -> float:
    """The exp schedule's per-epoch factor: `cfg.lr_decay`, or the one that reaches the floor
    `min_lr_ratio` after FLOOR_AT of the post-warmup epochs."""
    if cfg.lr_decay is not None:
        return cfg.lr_decay
    return cfg.min_lr_ratio ** (1.0 / (FLOOR_AT * (cfg.epochs - cfg.warmup_epochs)))


def lr_factor(cfg: TrainHParams, steps_per_epoch: int):
    """The lr multiplier as a function of the optimizer step, for `cfg`'s schedule."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.lr_schedule == "exp":
        return warmup_exp(warmup, steps_per_epoch, exp_decay(cfg), cfg.min_lr_ratio)
    return warmup_cosine(cfg.epochs * steps_per_epoch, warmup, cfg.min_lr_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainHParams, steps_per_epoch: int
) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
