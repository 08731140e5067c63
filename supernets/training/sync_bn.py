"""`train.sync_bn`: BatchNorm batch statistics over every DDP process, elastic widths included.

torch's `SyncBatchNorm` wants CUDA and full-width layers; a supernet's BN normalises only its
active leading channels (`DynamicBatchNorm2d`). Here every process computes the mean and the
sum of squared deviations of its batch on the active channels, one differentiable all_reduce
(gloo or nccl) gathers them, and they are merged (Chan's parallel variance) into the statistics
one process would get over the concatenated batch; the running stats are updated from those.
Gradients flow back through the all_reduce, so they match that process too.

Only forwards in train mode with gradients on synchronise: BN recalibration (`no_grad`) and
evaluation stay local, so code that runs on one rank alone never waits for the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from supernets.ops.norm import DynamicBatchNorm2d


def synced_batch_norm(
    bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
) -> torch.Tensor:
    """`bn`'s train-mode forward on `x` with statistics over all processes of the default group;
    `running_*`, `weight`, `bias` are the (sliced) tensors of the channels `x` has."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    xf = x.float()
    dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    count = xf.numel() // channels
    mean = xf.mean(dims)
    local = torch.cat([mean, ((xf - _bcast(mean, x)) ** 2).sum(dims), xf.new_tensor([count])])
    rank, zeros = dist.get_rank(), torch.zeros_like(local)
    rows = torch.stack([local if r == rank else zeros for r in range(dist.get_world_size())])
    rows = _AllReduceSum.apply(rows)  # SUM of one filled row per rank: an all_gather with a gradient
    means, m2s, counts = rows[:, :channels], rows[:, channels:-1], rows[:, -1:]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (m2s + counts * (means - mean) ** 2).sum(0) / total  # biased, as BN normalises
    out = (xf - _bcast(mean, x)) * torch.rsqrt(_bcast(var, x) + bn.eps)
    if weight is not None:
        out = out * _bcast(weight, x) + _bcast(bias, x)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = var * (total / (total - 1).clamp_min(1))
            running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
            running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)
    return out.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of every process's gradient (each
    process's output depends on every process's input)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def _syncs(bn: nn.Module) -> bool:
    return bn.training and torch.is_grad_enabled()


class SyncDynamicBatchNorm2d(DynamicBatchNorm2d):
    """`DynamicBatchNorm2d` whose training forward uses `synced_batch_norm` on the active slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _syncs(self):
            return super().forward(x)
        return synced_batch_norm(self, x, self._slice(self.running_mean),
                                 self._slice(self.running_var), self.active_weight(),
                                 self.active_bias())


class SyncBatchNorm2d(nn.BatchNorm2d):
    """A fixed-width `BatchNorm2d` (stems, heads) whose training forward is `synced_batch_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _syncs(self):
            return super().forward(x)
        return synced_batch_norm(self, x, self.running_mean, self.running_var, self.weight,
                                 self.bias)


SYNCED = {DynamicBatchNorm2d: SyncDynamicBatchNorm2d, nn.BatchNorm2d: SyncBatchNorm2d}


@contextlib.contextmanager
def synced_batchnorm(net: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, `net`'s BN layers synchronise (see module doc); yields how many.

    Layers change class in place (same parameters, buffers and state-dict keys, so optimizer,
    DDP and checkpoints see the same tensors) and get their own class back on exit."""
    swapped = []
    if enabled:
        for module in net.modules():
            synced = SYNCED.get(type(module))
            if synced is not None:
                swapped.append((module, type(module)))
                module.__class__ = synced
    try:
        yield len(swapped)
    finally:
        for module, cls in swapped:
            module.__class__ = cls
