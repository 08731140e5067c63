"""Model cost objectives: MACs and parameter counts of any `nn.Module`.

MACs come from `torch.utils.flop_counter`, which counts the matmul-like ops (convolution,
linear, matmul, attention) as 2 FLOPs per multiply-accumulate; we report MACs = FLOPs / 2.
Count on the *extracted* subnet so that only the active slices of elastic layers are counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasbench_core.errors import UserError


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a single sample of shape `input_shape` (no batch dim)."""
    x = torch.zeros((1, *input_shape), device=_device_of(model))
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    # Counting needs no parallelism, and one thread avoids stalls on a busy machine.
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one sample of shape `input_shape`."""
    return count_flops(model, input_shape) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameter elements, each shared parameter counted once."""
    return sum(p.numel() for p in model.parameters())


def subnet_input_shape(
    supernet: nn.Module, arch: Mapping[str, Any], input_shape: Sequence[int] | None = None
) -> tuple[int, ...]:
    """One sample's shape for `arch`: (in_chans, res, res), `res` from the arch when it has one.

    `input_shape` supplies what the arch does not say (the resolution of a fixed-resolution
    space); the channel count defaults to the supernet's `in_chans`.
    """
    build = supernet.build_config() if hasattr(supernet, "build_config") else {}
    chans = int(input_shape[0]) if input_shape else int(build.get("in_chans", 3))
    if "resolution" in arch:
        res = int(arch["resolution"])
        return (chans, res, res)
    if input_shape is None:
        res = getattr(supernet, "resolution", None) or build.get("resolution")
        if res is None:
            raise UserError(
                "input shape unknown: the search space has no 'resolution' and no input_shape "
                "was given"
            )
        return (chans, int(res), int(res))
    return tuple(int(v) for v in input_shape)


def subnet_costs(
    supernet: nn.Module, arch: Mapping[str, Any], input_shape: Sequence[int] | None = None
) -> dict[str, int]:
    """MACs and params of the subnet `supernet.extract(arch)` at the arch's input shape."""
    module = supernet.extract(arch)
    shape = subnet_input_shape(supernet, arch, input_shape)
    return {"macs": count_macs(module, shape), "params": count_params(module)}
