"""Elastic linear layer: leading slices of out and in features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernets.ops.factory import like


class DynamicLinear(nn.Linear):
    """A linear layer over the first `active_in` inputs producing the first `active_out` outputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.active_in, self.active_out = in_features, out_features

    def set_active(self, out_features: int, in_features: int) -> None:
        self.__dict__.update(active_out=out_features, active_in=in_features)  # see DynamicConv2d

    def active_weight(self) -> torch.Tensor:
        if self.active_out == self.out_features and self.active_in == self.in_features:
            return self.weight
        return self.weight[: self.active_out, : self.active_in]

    def active_bias(self) -> torch.Tensor | None:
        if self.bias is None or self.active_out == self.out_features:
            return self.bias
        return self.bias[: self.active_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())

    def to_stock(self) -> nn.Linear:
        lin = nn.Linear(self.active_in, self.active_out, bias=self.bias is not None,
                        **like(self.weight))
        with torch.no_grad():
            lin.weight.copy_(self.active_weight())
            if self.bias is not None:
                lin.bias.copy_(self.active_bias())
        return lin

    @staticmethod
    def count(in_features: int, out_features: int, bias: bool = True) -> int:
        return out_features * in_features + (out_features if bias else 0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", active=({self.active_in}->{self.active_out})"
