"""Factory keywords that make a stock layer where the supernet's tensors live.

Why: extraction builds fresh `nn.Conv2d`/`nn.Linear`/norm layers; built with torch's defaults
they land in float32 on the CPU, so a float64 or CUDA supernet would extract a subnet that
either fails on its inputs or silently rounds the copied weights.
"""

from __future__ import annotations

from typing import Any

import torch


def like(tensor: torch.Tensor) -> dict[str, Any]:
    """`device=` and `dtype=` of `tensor`, for a torch layer constructor."""
    return {"device": tensor.device, "dtype": tensor.dtype}
