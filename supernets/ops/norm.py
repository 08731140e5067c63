"""Elastic normalisation: leading slices of affine parameters and running statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernets.ops.factory import like


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first `active_features` channels.

    In train mode it normalises with the slice's batch stats and updates the slice of the
    running stats in place (views), so `recalibrate_bn` and `momentum=None` work unchanged.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.active_features = num_features

    def set_active(self, features: int) -> None:
        self.__dict__["active_features"] = features  # see DynamicConv2d.set_active

    def _slice(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or self.active_features == self.num_features:
            return t
        return t[: self.active_features]

    def active_weight(self) -> torch.Tensor:
        return self._slice(self.weight)

    def active_bias(self) -> torch.Tensor:
        return self._slice(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x, self._slice(self.running_mean), self._slice(self.running_var),
            self.active_weight(), self.active_bias(), use_batch_stats, factor, self.eps,
        )

    def to_stock(self) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(self.active_features, eps=self.eps, momentum=self.momentum,
                            **like(self.weight))
        with torch.no_grad():
            bn.weight.copy_(self.active_weight())
            bn.bias.copy_(self.active_bias())
            bn.running_mean.copy_(self._slice(self.running_mean))
            bn.running_var.copy_(self._slice(self.running_var))
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn

    def extra_repr(self) -> str:
        return super().extra_repr() + f", active={self.active_features}"


class DynamicLayerNorm(nn.LayerNorm):
    """LayerNorm over the first `active_dim` features of the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)
        self.active_dim = dim

    def set_active(self, dim: int) -> None:
        self.__dict__["active_dim"] = dim  # see DynamicConv2d.set_active

    def active_weight(self) -> torch.Tensor:
        return self.weight[: self.active_dim]

    def active_bias(self) -> torch.Tensor:
        return self.bias[: self.active_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.active_dim,), self.active_weight(), self.active_bias(),
                            self.eps)

    def to_stock(self) -> nn.LayerNorm:
        ln = nn.LayerNorm(self.active_dim, eps=self.eps, **like(self.weight))
        with torch.no_grad():
            ln.weight.copy_(self.active_weight())
            ln.bias.copy_(self.active_bias())
        return ln

    def extra_repr(self) -> str:
        return super().extra_repr() + f", active={self.active_dim}"
