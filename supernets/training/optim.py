"""Optimizer and per-step learning-rate schedule of the training recipe.

Norm and bias parameters get no weight decay (timm's grouping rule); the schedule is a linear
warmup followed by a cosine decay, stepped once per optimizer step, so resuming mid-run only
needs the step counter.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from supernets.training.hparams import TrainHParams


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainHParams, steps_per_epoch: int
) -> LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return LambdaLR(optimizer, warmup_cosine(total, warmup, cfg.min_lr_ratio))
