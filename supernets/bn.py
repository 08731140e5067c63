"""BatchNorm recalibration: exact cumulative running statistics for the current (sub)network.

Weight sharing leaves each subnet's BN running stats wrong; re-estimating them over a few
batches (OFA's BN reset) is what makes inherited accuracy meaningful.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from supernets.base import Supernet, batches_for, prepare_input


def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int, *,
                   arch: Mapping[str, Any] | None = None) -> nn.Module:
    """Reset BN running stats and re-estimate them as the plain average over `num_batches`.

    Supernets run their active arch and resize inputs to its resolution; for other modules
    pass `arch` to resize the same way. A loader with `at_resolution` (data mode) is asked for
    its samples at the arch's resolution instead (`batches_for`). Gradients are off and
    train/eval mode is restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return model
    if arch is None and isinstance(model, Supernet):
        arch = model.active_arch
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    device = next(model.parameters()).device
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches_for(loader, arch)):
                if i >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                model(prepare_input(x.to(device), arch))
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return model
