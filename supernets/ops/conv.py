"""Elastic convolution: out/in channels by leading slice, kernel by centre crop + transform."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from supernets.ops.factory import like
from supernets.ops.versions import weights_stamp

# oneDNN's CPU float32 depthwise weight-gradient kernel in channels-last falls off a cliff once
# k*k*channels passes ~32k floats (measured, 1 thread, batch 16, conv forward + backward:
# 960 channels 4x4 k7 35.7 ms, its two 480-channel halves 11.5 ms; 672 channels 8x8 k7 32 ms
# vs 19.7 ms; 576-channel k7 and 960-channel k5 are not hit). A depthwise conv's channels are
# independent, so training runs such a conv in channel chunks below the cliff: the outputs and
# gradients are bit-identical (tests/test_supernets_ops.py), only faster.
_DW_CLIFF_FLOATS = 32768
_DW_CHUNK_FLOATS = 24576


def _chunks_for(x: torch.Tensor, w: torch.Tensor) -> int:
    """How many channel chunks a depthwise conv of `w` over `x` runs in (1: all at once)."""
    size = w.shape[0] * w.shape[-2] * w.shape[-1]
    if (size <= _DW_CLIFF_FLOATS or x.device.type != "cpu" or x.dtype != torch.float32
            or not torch.is_grad_enabled() or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return 1
    return -(-size // _DW_CHUNK_FLOATS)


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int,
                     padding: int) -> torch.Tensor:
    """`F.conv2d(x, w, b, stride, padding, groups=channels)`, in channel chunks where a
    single call would hit oneDNN's depthwise weight-gradient cliff (see `_DW_CLIFF_FLOATS`)."""
    channels, n = w.shape[0], _chunks_for(x, w)
    if n == 1:
        return F.conv2d(x, w, b, stride, padding, 1, channels)
    step = -(-channels // n)
    # split, not indexing: split's backward concatenates the chunks' input gradients, which
    # keeps them channels-last (an index's backward would scatter into a contiguous zeros)
    xs, ws = x.split(step, 1), w.split(step)
    biases = [None] * len(ws) if b is None else b.split(step)
    return torch.cat([
        F.conv2d(xc, wc, bc, stride, padding, 1, wc.shape[0])
        for xc, wc, bc in zip(xs, ws, biases, strict=True)
    ], dim=1)


class DynamicConv2d(nn.Module):
    """A conv whose active out/in channels and kernel size are set per arch.

    Depthwise convs (`depthwise=True`) have as many groups as active channels. With
    `transform_kernel`, a smaller kernel is the centre of the next larger one passed through a
    learned (k*k x k*k) matrix, applied step by step from the largest kernel (OFA's elastic
    kernel), so small kernels need not share raw weights with large ones.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: int | Sequence[int] = 1,
        stride: int = 1,
        *,
        depthwise: bool = False,
        bias: bool = False,
        transform_kernel: bool = True,
        padding: int | None = None,
    ):
        super().__init__()
        ks = sorted({kernel_sizes} if isinstance(kernel_sizes, int) else set(kernel_sizes))
        if depthwise and in_channels != out_channels:
            raise ValueError("a depthwise conv needs in_channels == out_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_sizes = tuple(ks)
        self.max_kernel = ks[-1]
        self.stride = stride
        self.depthwise = depthwise
        self.padding = padding  # None: "same" padding of the active kernel
        self.weight = nn.Parameter(
            torch.empty(out_channels, 1 if depthwise else in_channels, ks[-1], ks[-1])
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.kernel_transforms = None
        if depthwise and transform_kernel and len(ks) > 1:
            self.kernel_transforms = nn.ParameterDict(
                {f"{big}to{small}": nn.Parameter(torch.eye(small * small))
                 for big, small in zip(ks[:0:-1], ks[-2::-1], strict=True)}
            )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.active_in, self.active_out, self.active_kernel = in_channels, out_channels, ks[-1]
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def set_active(self, out_channels: int, in_channels: int | None = None,
                   kernel: int | None = None) -> None:
        # plain attributes: skip nn.Module.__setattr__, which costs µs per call per step
        self.__dict__.update(
            active_out=out_channels,
            active_in=out_channels if self.depthwise else (in_channels or self.in_channels),
            active_kernel=kernel or self.max_kernel,
        )

    def active_weight(self) -> torch.Tensor:
        out, k = self.active_out, self.active_kernel
        w = self.weight
        if out != self.out_channels or (not self.depthwise and self.active_in != self.in_channels):
            w = w[:out] if self.depthwise else w[:out, : self.active_in]
        if k == self.max_kernel:
            return w
        if self.kernel_transforms is None:
            start = (self.max_kernel - k) // 2
            return w[:, :, start : start + k, start : start + k]
        if torch.is_grad_enabled():
            return self._transformed(w, k)
        # Inference: reuse the transformed kernel until any source tensor changes in place.
        key = (out, k, w.dtype, w.device,  # a cast or a move does not bump _version
               *weights_stamp((self.weight, *self.kernel_transforms.values())))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._transformed(w, k))
        return self._cache[1]

    def _transformed(self, w: torch.Tensor, k: int) -> torch.Tensor:
        big = self.max_kernel
        for small in reversed(self.kernel_sizes):
            if small >= big:
                continue
            start = (big - small) // 2
            w = w[:, :, start : start + small, start : start + small].reshape(w.shape[0], -1)
            w = F.linear(w, self.kernel_transforms[f"{big}to{small}"])
            w = w.view(w.shape[0], 1, small, small)
            big = small
            if small == k:
                break
        return w

    def active_bias(self) -> torch.Tensor | None:
        if self.bias is None or self.active_out == self.out_channels:
            return self.bias
        return self.bias[: self.active_out]

    @property
    def active_padding(self) -> int:
        return self.active_kernel // 2 if self.padding is None else self.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise:
            return depthwise_conv2d(x, self.active_weight(), self.active_bias(), self.stride,
                                    self.active_padding)
        return F.conv2d(x, self.active_weight(), self.active_bias(), self.stride,
                        self.active_padding)

    def to_stock(self) -> nn.Conv2d:
        k = self.active_kernel
        conv = nn.Conv2d(
            self.active_in, self.active_out, k, self.stride, self.active_padding,
            groups=self.active_out if self.depthwise else 1, bias=self.bias is not None,
            **like(self.weight),
        )
        with torch.no_grad():
            conv.weight.copy_(self.active_weight())
            if self.bias is not None:
                conv.bias.copy_(self.active_bias())
        return conv

    @staticmethod
    def count(in_channels: int, out_channels: int, kernel: int, *, depthwise: bool = False,
              bias: bool = False) -> int:
        """Parameters of the stock conv an active config extracts to."""
        per_out = kernel * kernel * (1 if depthwise else in_channels)
        return out_channels * per_out + (out_channels if bias else 0)

    def extra_repr(self) -> str:
        kind = "depthwise, " if self.depthwise else ""
        return (f"{self.in_channels}, {self.out_channels}, {kind}kernels={self.kernel_sizes}, "
                f"stride={self.stride}, active=({self.active_in}->{self.active_out}, "
                f"k{self.active_kernel})")
