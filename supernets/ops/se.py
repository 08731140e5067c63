"""Elastic squeeze-excite: the reduced width follows the active channel count."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernets.ops.channels import make_divisible
from supernets.ops.conv import DynamicConv2d
from supernets.stock import SqueezeExcite


class DynamicSqueezeExcite(nn.Module):
    """SE over the first C channels with make_divisible(C * ratio) reduced channels (MBv3 style)."""

    def __init__(self, channels: int, ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        self.ratio, self.divisor = ratio, divisor
        rd = self.reduced(channels)
        self.reduce = DynamicConv2d(channels, rd, 1, bias=True)
        self.expand = DynamicConv2d(rd, channels, 1, bias=True)

    def reduced(self, channels: int) -> int:
        return make_divisible(channels * self.ratio, self.divisor)

    def set_active(self, channels: int) -> None:
        rd = self.reduced(channels)
        self.reduce.set_active(rd, channels)
        self.expand.set_active(channels, rd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s), inplace=True))
        return x * F.hardsigmoid(s)

    def to_stock(self) -> SqueezeExcite:
        return SqueezeExcite(self.reduce.to_stock(), self.expand.to_stock())

    def count(self, channels: int) -> int:
        rd = self.reduced(channels)
        return DynamicConv2d.count(channels, rd, 1, bias=True) + DynamicConv2d.count(
            rd, channels, 1, bias=True)
