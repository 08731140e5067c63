"""Layer-DP in structured mode: per-group distortion curves, then the layer-DP solve.

For each coupled-channel group g and amount a_k, the ⌊a_k·C_g⌉ least important channels of g
alone are zeroed (forward hooks on every module that outputs them, so BN shifts and residual
adds see exact zeros, as if the channels were gone) and the output-logit MSE against the dense
model is measured on calibration inputs (or N(0,1) inputs shaped like `example_input`). The
total distortion is taken as additive over groups (Xu et al., ICCV 2023) and
`pruners.layer_dp.solve_dp` picks the channels each group loses, one budget unit per channel,
so the solve is exact and removes exactly the requested count.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from pruners.layer_dp import calibration_inputs, solve_dp
from pruners.structured import ChannelGroup, DPShrinkOptions, least_important, register_shrinker


@contextmanager
def zeroed_channels(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Multiply each named module's output channels by a 0/1 mask (dim 1, or the last dim for
    Linear/LayerNorm); the masks are read at every forward, so callers may edit them in place."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        module = modules[name]
        dim = -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1

        def hook(mod, args, out, mask=mask, dim=dim):
            shape = [1] * out.dim()
            shape[dim] = -1
            return out * mask.view(shape).to(out.dtype)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def group_masks(group: ChannelGroup, removed: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Per output module of `group`, a 0/1 channel mask with the `removed` root channels at 0."""
    out = {}
    for name, per_root in group.outputs.items():
        width = 1 + max(i for idxs in per_root.values() for i in idxs)
        mask = torch.ones(width, device=device)
        for r in removed:
            mask[per_root.get(r, [])] = 0.0
        out[name] = mask
    return out


@torch.no_grad()
def group_distortion_curves(model: nn.Module, groups: Sequence[ChannelGroup], inputs: torch.Tensor,
                            counts: np.ndarray, batch_size: int) -> np.ndarray:
    """D[g, k]: mean output MSE when only group g loses its counts[g, k] least important channels."""
    was_training = model.training
    model.eval()
    device = inputs.device

    def outputs() -> torch.Tensor:
        return torch.cat([model(inputs[i : i + batch_size]).float()
                          for i in range(0, len(inputs), batch_size)])

    try:
        ref = outputs()
        curves = np.zeros(counts.shape)
        for gi, g in enumerate(groups):
            for ki, c in enumerate(counts[gi]):
                if c == 0:
                    continue
                if ki and c == counts[gi, ki - 1]:  # capped: the same channels as before
                    curves[gi, ki] = curves[gi, ki - 1]
                    continue
                with zeroed_channels(model, group_masks(g, least_important(g.scores, int(c)), device)):
                    curves[gi, ki] = float((outputs() - ref).square().mean())
    finally:
        model.train(was_training)
    return curves


@register_shrinker("layer_dp", options=DPShrinkOptions, needs=("data",))
def _layer_dp(model: nn.Module, groups: Sequence[ChannelGroup], n_remove: int, o: DPShrinkOptions, *,
              caps: list[int], example_input: torch.Tensor, data: Any = None, **_: Any) -> list[int]:
    if not groups or n_remove == 0:
        return [0] * len(groups)
    inputs = calibration_inputs(data, example_input, o.num_samples, o.seed)
    amounts = np.linspace(0.0, 1.0, o.num_amounts)
    sizes = [g.channels for g in groups]
    counts = np.minimum(np.rint(np.outer(sizes, amounts)).astype(np.int64), np.asarray(caps)[:, None])
    curves = group_distortion_curves(model, groups, inputs, counts, o.batch_size)
    sol = solve_dp(curves, sizes, amounts, n_remove, budget_units=sum(sizes), caps=caps)
    return sol.counts
