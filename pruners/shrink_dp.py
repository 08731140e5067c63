"""Layer-DP in structured mode: per-group distortion curves, then the layer-DP solve.

For each coupled-channel group g and amount a_k, the ⌊a_k·C_g⌉ least important channels of g
alone are zeroed (forward hooks on every module that outputs them, so BN shifts and residual
adds see exact zeros, as if the channels were gone) and the output-logit MSE against the dense
model is measured on calibration inputs (or N(0,1) inputs shaped like `example_input`). The
total distortion is taken as additive over groups (Xu et al., ICCV 2023) and
`pruners.layer_dp.solve_dp` picks the channels each group loses.

- `budget="channels"`: one budget unit per channel, so the solve is exact and removes exactly
  round(amount·C) channels.
- `budget="params"` / `"macs"` (the paper's FLOPs budget): remove at least amount × the
  prunable parameters / MACs (`pruners.shrink_costs`). What a channel removes depends on what
  its neighbours lose (a weight between two pruned groups goes once, not twice), so the budget
  is linearised: round 1 prices each channel at what removing it from the dense model removes,
  later rounds at the exact per-channel share of the previous allocation (`CostModel.prices`),
  until an allocation repeats (at most `PRICE_ROUNDS`). After each solve `settle` makes the
  allocation exact with the true counts: it adds the channels with the least distortion per
  unit removed while short of the target, then returns the most costly ones while the target
  still holds, so the result removes at least the target and less than one more channel's
  worth. Then one coordinate pass: each group at each measured count, the others settled
  around it. The lowest Σ D_g wins (curves interpolated between measured counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from pruners.errors import PruneError
from pruners.layer_dp import calibration_inputs, solve_dp
from pruners.shrink_costs import CostModel, cost_model
from pruners.structured import ChannelGroup, DPShrinkOptions, least_important, register_shrinker

PRICE_ROUNDS = 8  # re-linearisations of a params/MACs budget
BUDGET_UNITS = 8192  # DP resolution of a params/MACs budget (settle makes the result exact)


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


def budget_target(costs: CostModel, amount: float) -> int:
    """Units (params or MACs) to remove: at least amount × the prunable ones."""
    return math.ceil(amount * costs.prunable - 1e-6)  # a fraction computed from a count gives it back


def _check(model: nn.Module, groups: Sequence[ChannelGroup], amount: float, o: DPShrinkOptions, *,
           caps: list[int], example_input: torch.Tensor) -> None:
    """budget=params/macs: the groups can be counted and, within min_keep, reach the target."""
    if o.budget == "channels":
        return
    costs = cost_model(model, groups, o.budget, example_input)
    target, most = budget_target(costs, amount), costs.removed(caps)
    if target > most:
        raise PruneError(f"cannot remove {target:,} of {costs.prunable:,} prunable {o.budget} keeping "
                         f"min_keep={o.min_keep} channels per group (at most {most:,})")


def _interp(curves: np.ndarray, counts: np.ndarray) -> list[Callable[[int], float]]:
    """D_g at any channel count: linear between the measured counts."""
    out = []
    for curve, xs in zip(curves, counts, strict=True):
        xp, first = np.unique(xs, return_index=True)
        out.append(lambda c, xp=xp, fp=curve[first]: float(np.interp(c, xp, fp)))
    return out


def settle(x: Sequence[int], costs: CostModel, target: int, caps: Sequence[int],
           dist: Sequence[Callable[[int], float]], fixed: int | None = None) -> list[int]:
    """The allocation made exact: add channels (least distortion per unit removed) while it
    removes less than `target`, then return channels (largest distortion saved) while it
    still removes at least `target`; group `fixed` keeps its count."""
    x = np.asarray(x, np.int64).copy()
    eye = np.eye(len(x), dtype=np.int64)
    free = [g for g in range(len(x)) if g != fixed]
    while costs.removed(x) < target:
        gain = costs.marginal(x)
        rate = {g: (dist[g](x[g] + 1) - dist[g](x[g])) / gain[g] for g in free
                if x[g] < caps[g] and gain[g] > 0}
        if not rate:
            return []  # with g fixed the others cannot reach the target
        x[min(rate, key=rate.__getitem__)] += 1
    while True:
        ok = [g for g in free if x[g] > 0 and costs.removed(x - eye[g]) >= target]
        if not ok:
            return [int(c) for c in x]
        x[max(ok, key=lambda g: dist[g](x[g]) - dist[g](x[g] - 1))] -= 1


def budget_allocation(curves: np.ndarray, counts: np.ndarray, amounts: np.ndarray, costs: CostModel,
                      target: int, caps: Sequence[int]) -> list[int]:
    """The params/MACs-budget allocation: DP on linearised prices, re-linearised at its own
    solution, each solution settled to the exact target; then one coordinate pass (each group
    at each measured count, the others settled around it). The least Σ D_g wins."""
    sizes = [int(c) for c in costs.channels]
    dist = _interp(curves, counts)

    def score(alloc: list[int]) -> float:
        return sum(d(c) for d, c in zip(dist, alloc, strict=True)) if alloc else np.inf

    x = np.zeros(len(sizes), np.int64)
    best: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(PRICE_ROUNDS):
        prices = np.rint(2 * costs.prices(x)).astype(np.int64)  # 2x: the shares are half-integers
        sol = solve_dp(curves, sizes, amounts, 2 * target, budget_units=BUDGET_UNITS, caps=caps,
                       prices=np.maximum(prices, 1))
        settled = settle(sol.counts, costs, target, caps, dist)
        best = min(best, settled, key=score) if best else settled
        if tuple(settled) in seen:
            break
        seen.add(tuple(settled))
        x = np.asarray(settled, np.int64)
    for g in range(len(sizes)):
        for v in sorted({int(c) for c in counts[g]} - {best[g]}):
            start = list(best)
            start[g] = v
            around = settle(start, costs, target, caps, dist, fixed=g)
            if around:  # its spare channels in g go back too
                best = min(best, settle(around, costs, target, caps, dist), key=score)
    return best


@register_shrinker("layer_dp", options=DPShrinkOptions, needs=("data",), check=_check)
def _layer_dp(model: nn.Module, groups: Sequence[ChannelGroup], n_remove: int, o: DPShrinkOptions, *,
              caps: list[int], example_input: torch.Tensor, amount: float, data: Any = None,
              **_: Any) -> list[int]:
    costs = None if o.budget == "channels" else cost_model(model, groups, o.budget, example_input)
    target = n_remove if costs is None else budget_target(costs, amount)
    if not groups or target == 0:
        return [0] * len(groups)
    inputs = calibration_inputs(data, example_input, o.num_samples, o.seed)
    amounts = np.linspace(0.0, 1.0, o.num_amounts)
    sizes = [g.channels for g in groups]
    counts = np.minimum(np.rint(np.outer(sizes, amounts)).astype(np.int64), np.asarray(caps)[:, None])
    curves = group_distortion_curves(model, groups, inputs, counts, o.batch_size)
    if costs is not None:
        return budget_allocation(curves, counts, amounts, costs, target, caps)
    sol = solve_dp(curves, sizes, amounts, n_remove, budget_units=sum(sizes), caps=caps)
    return sol.counts
