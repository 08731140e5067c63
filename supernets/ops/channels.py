"""Channel arithmetic shared by families and elastic ops: rounding and L1 re-ordering."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to a multiple of `divisor`, never more than 10% below it (MobileNet rule)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def importance_order(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Indices of `weight`'s slices along `dim`, most important (largest L1) first."""
    dims = [d for d in range(weight.dim()) if d != dim]
    scores = weight.detach().abs().sum(dim=dims)
    return torch.argsort(scores, descending=True, stable=True)


def channel_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """`module.<name>` with output channels on dim 0 and input channels on dim 1.

    A layer that stores its tensors in another layout (a MoS layer stacks experts first)
    returns a view in this one from `channel_view`; writes through the view move its storage.
    """
    tensor = getattr(module, name, None)
    view = getattr(module, "channel_view", None)
    return tensor if tensor is None or view is None else view(tensor)


def permute_(module: nn.Module, order: torch.Tensor, dim: int) -> None:
    """Re-order a layer's output (dim 0) or input (dim 1) channels in place.

    Norm layers only have output channels: their affine parameters and running stats move.
    A module with per-output-channel state of its own (a neuron-routed MoS layer's router)
    moves it in `on_permute_outputs(order)`.
    """
    with torch.no_grad():
        if dim == 0:
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = channel_tensor(module, name)
                if t is not None:
                    t.copy_(t.index_select(0, order))
            hook = getattr(module, "on_permute_outputs", None)
            if hook is not None:
                hook(order)
        else:
            w = channel_tensor(module)
            if w.shape[1] > 1:  # depthwise convs have no input channels to move
                w.copy_(w.index_select(1, order))
