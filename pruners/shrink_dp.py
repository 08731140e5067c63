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
from pruners.round_to import closest_total, min_by_total, snap
from pruners.shrink_costs import CostModel, cost_model
from pruners.structured import ChannelGroup, DPShrinkOptions, least_important, register_shrinker, rounded

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
        rounding = f" and multiples of round_to={o.round_to}" if rounded(o) else ""
        raise PruneError(f"cannot remove {target:,} of {costs.prunable:,} prunable {o.budget} keeping "
                         f"min_keep={o.min_keep} channels per group{rounding} (at most {most:,})")


def _interp(curves: np.ndarray, counts: np.ndarray) -> list[Callable[[int], float]]:
    """D_g at any channel count: linear between the measured counts."""
    out = []
    for curve, xs in zip(curves, counts, strict=True):
        xp, first = np.unique(xs, return_index=True)
        out.append(lambda c, xp=xp, fp=curve[first]: float(np.interp(c, xp, fp)))
    return out


def settle(x: Sequence[int], costs: CostModel, target: int, grids: Sequence[np.ndarray],
           dist: Sequence[Callable[[int], float]], fixed: int | None = None) -> list[int]:
    """The allocation made exact: move a group one step up its grid (least distortion per unit
    removed) while it removes less than `target`, then one step down (largest distortion
    saved) while it still removes at least `target`; group `fixed` keeps its count. `x` is on
    the grids (`pruners.round_to.removal_grid`; without round_to every count up to the cap)."""
    x = np.asarray(x, np.int64).copy()
    pos = [int(np.searchsorted(grid, c)) for grid, c in zip(grids, x, strict=True)]
    free = [g for g in range(len(x)) if g != fixed]

    def moved(g: int, step: int) -> np.ndarray:
        y = x.copy()
        y[g] = grids[g][pos[g] + step]
        return y

    while (base := costs.removed(x)) < target:
        rate = {}
        for g in free:
            if pos[g] + 1 < len(grids[g]):
                y = moved(g, 1)
                gain = costs.removed(y) - base
                if gain > 0:
                    rate[g] = (dist[g](int(y[g])) - dist[g](int(x[g]))) / gain
        if not rate:
            return []  # with g fixed the others cannot reach the target
        g = min(rate, key=rate.__getitem__)
        x, pos[g] = moved(g, 1), pos[g] + 1
    while True:
        ok = [g for g in free if pos[g] > 0 and costs.removed(moved(g, -1)) >= target]
        if not ok:
            return [int(c) for c in x]
        g = max(ok, key=lambda g: dist[g](int(x[g])) - dist[g](int(grids[g][pos[g] - 1])))
        x, pos[g] = moved(g, -1), pos[g] - 1


def grid_values(dist: Sequence[Callable[[int], float]], grids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """D_g at every count of its grid."""
    return [np.asarray([d(int(c)) for c in grid]) for d, grid in zip(dist, grids, strict=True)]


def rounded_channel_allocation(curves: np.ndarray, counts: np.ndarray, grids: Sequence[np.ndarray],
                               target: int) -> list[int]:
    """budget=channels with round_to: the least Σ D_g over every choice of one grid count per
    group (D interpolated between the measured counts) whose total is the grid's closest to
    `target` (ties: the smaller). Exact: a DP over the total removed."""
    f, pick = min_by_total(grids, grid_values(_interp(curves, counts), grids))
    return [int(grid[i]) for grid, i in zip(grids, pick(closest_total(f, target)), strict=True)]


def _grid_budget_solve(values: Sequence[np.ndarray], grids: Sequence[np.ndarray], prices: np.ndarray,
                       target: int) -> list[int]:
    """The least Σ D_g over the grids with the linearised Σ prices_g·x_g >= target, each
    option's price floored to units of 1/BUDGET_UNITS of the most the grids remove (so the
    constraint never over-counts); the largest reachable total if none meets it."""
    unit = max(1.0, float(sum(p * grid[-1] for p, grid in zip(prices, grids, strict=True))) / BUDGET_UNITS)
    units = [np.floor(p * grid / unit).astype(np.int64) for p, grid in zip(prices, grids, strict=True)]
    f, pick = min_by_total(units, values)
    need = min(math.ceil(target / unit), len(f) - 1)
    ok = np.flatnonzero(np.isfinite(f[need:]))
    t = need + int(ok[np.argmin(f[need:][ok])]) if len(ok) else int(np.flatnonzero(np.isfinite(f))[-1])
    return [int(grid[i]) for grid, i in zip(grids, pick(t), strict=True)]


def budget_allocation(curves: np.ndarray, counts: np.ndarray, amounts: np.ndarray, costs: CostModel,
                      target: int, caps: Sequence[int], grids: Sequence[np.ndarray] | None = None) -> list[int]:
    """The params/MACs-budget allocation: DP on linearised prices, re-linearised at its own
    solution, each solution settled to the exact target; then one coordinate pass (each group
    at each measured count, the others settled around it). The least Σ D_g wins. `grids`
    (round_to): the DP and every step choose among each group's grid counts only."""
    sizes = [int(c) for c in costs.channels]
    dist = _interp(curves, counts)
    steps = [np.arange(c + 1) for c in caps] if grids is None else list(grids)
    values = None if grids is None else grid_values(dist, steps)

    def score(alloc: list[int]) -> float:
        return sum(d(c) for d, c in zip(dist, alloc, strict=True)) if alloc else np.inf

    x = np.zeros(len(sizes), np.int64)
    best: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(PRICE_ROUNDS):
        if values is None:
            prices = np.rint(2 * costs.prices(x)).astype(np.int64)  # 2x: the shares are half-integers
            sol = solve_dp(curves, sizes, amounts, 2 * target, budget_units=BUDGET_UNITS, caps=caps,
                           prices=np.maximum(prices, 1)).counts
        else:
            sol = _grid_budget_solve(values, steps, np.maximum(costs.prices(x), 0.0), target)
        settled = settle(sol, costs, target, steps, dist)
        best = min(best, settled, key=score) if best else settled
        if tuple(settled) in seen:
            break
        seen.add(tuple(settled))
        x = np.asarray(settled, np.int64)
    for g in range(len(sizes)):
        for v in sorted({int(c) for c in counts[g]} - {best[g]}):
            start = list(best)
            start[g] = v
            around = settle(start, costs, target, steps, dist, fixed=g)
            if around:  # its spare channels in g go back too
                best = min(best, settle(around, costs, target, steps, dist), key=score)
    return best


@register_shrinker("layer_dp", options=DPShrinkOptions, needs=("data",), check=_check)
def _layer_dp(model: nn.Module, groups: Sequence[ChannelGroup], n_remove: int, o: DPShrinkOptions, *,
              caps: list[int], grids: list[np.ndarray], example_input: torch.Tensor, amount: float,
              data: Any = None, **_: Any) -> list[int]:
    costs = None if o.budget == "channels" else cost_model(model, groups, o.budget, example_input)
    target = n_remove if costs is None else budget_target(costs, amount)
    if not groups or target == 0:
        return [0] * len(groups)
    inputs = calibration_inputs(data, example_input, o.num_samples, o.seed)
    amounts = np.linspace(0.0, 1.0, o.num_amounts)
    sizes = [g.channels for g in groups]
    ideal = np.rint(np.outer(sizes, amounts))  # measured at the grid count nearest each amount
    counts = np.asarray([[snap(grid, c) for c in row] for grid, row in zip(grids, ideal, strict=True)],
                        np.int64).reshape(ideal.shape)
    curves = group_distortion_curves(model, groups, inputs, counts, o.batch_size)
    if costs is not None:
        return budget_allocation(curves, counts, amounts, costs, target, caps,
                                 grids if rounded(o) else None)
    if rounded(o):
        return rounded_channel_allocation(curves, counts, grids, n_remove)
    sol = solve_dp(curves, sizes, amounts, n_remove, budget_units=sum(sizes), caps=caps)
    return sol.counts
