"""Layer-adaptive magnitude pruning solved by dynamic programming (Xu et al., ICCV 2023).

1. Distortion curves: for each layer l and pruning amount a_k (K values in [0, 1]), prune
   only layer l by magnitude to a_k, others held at their current masks, and measure the
   output-logit MSE against the unpruned-at-this-step model (mean over samples, or the worst
   sample) on calibration inputs, or on N(0,1) inputs in zero-data mode.
2. Additivity: the total distortion is taken as Σ_l D_l(a_l).
3. DP over layers minimising Σ D_l subject to the kept-weight budget. The budget is counted
   in B units of ceil(N/B) weights (a layer's kept count is rounded *up* to whole units, so
   every DP solution is feasible), giving O(L·K·B) time and O(L·B) memory. The reference
   code counts single weights (B = N), which needs > 10 GB on ResNet-50.
4. Exactness: the unit rounding leaves at most L units unspent; they are handed back to the
   layers with the steepest distortion slope, so exactly round(s·N) weights are pruned.

Discretisation error: a solution may leave up to L·ceil(N/B) budget weights unused before the
hand-back, and the DP may miss allocations that differ by less than one unit per layer;
`nasbench bench pruning` measures the objective gap against the exact B = N solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pruners.baselines import layerwise_masks, pruned_counts
from pruners.errors import PruneError
from pruners.magnitude import min_keep_counts
from pruners.masks import apply_masks
from pruners.selection import Target


def calibration_inputs(
    data: torch.Tensor | Iterable | None,
    example_input: torch.Tensor | None,
    num_samples: int,
    seed: int = 0,
) -> torch.Tensor:
    """First `num_samples` inputs of `data` (a tensor or an iterable of (x, y) batches),
    or N(0,1) inputs shaped like `example_input` (zero-data mode)."""
    if data is None:
        if example_input is None:
            raise PruneError("layer_dp needs calibration `data` or an `example_input` shape")
        gen = torch.Generator().manual_seed(seed)
        shape = (num_samples, *example_input.shape[1:])
        return torch.randn(shape, generator=gen).to(example_input.device, example_input.dtype)
    if isinstance(data, torch.Tensor):
        return data[:num_samples]
    xs, have = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        xs.append(x)
        have += len(x)
        if have >= num_samples:
            break
    if not xs:
        raise PruneError("calibration data is empty")
    return torch.cat(xs)[:num_samples]


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def distortion_curves(
    model: nn.Module,
    targets: Sequence[Target],
    inputs: torch.Tensor,
    amounts: np.ndarray,
    *,
    worst_case: bool = False,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """D[l, k]: output MSE when only layer l is pruned to amounts[k] (others at current masks).

    Amounts below a layer's current sparsity keep the current mask (masks only grow).
    Weights are zeroed in place in magnitude order (stable: ties by flat index, as the
    selection kernels do) and restored afterwards, even on error.
    """
    was_training = model.training
    model.eval()
    try:
        ref = _outputs(model, inputs, batch_size).float()
        curves = np.zeros((len(targets), len(amounts)))
        for li, t in enumerate(targets):
            storage = t.param
            backup = storage.detach().clone()
            order = torch.argsort(t.tensor.abs().reshape(-1), stable=True)
            flat = storage.data.view(-1)
            done = 0
            try:
                for ki, a in enumerate(amounts):
                    c = round(float(a) * t.numel)
                    if c > done:
                        flat[order[done:c]] = 0
                        done = c
                    out = _outputs(model, inputs, batch_size).float()
                    per_sample = (out - ref).square().reshape(len(out), -1).mean(1)
                    curves[li, ki] = float(per_sample.max() if worst_case else per_sample.mean())
            finally:
                storage.data.copy_(backup)
            if progress is not None:
                progress(li + 1, len(targets))
    finally:
        model.train(was_training)
    return curves


@dataclass
class DPSolution:
    """Per-layer prune counts (summing exactly to k) and the DP's view of the solution."""

    counts: list[int]
    grid_index: list[int]
    objective: float  # Σ D_l at the chosen grid amounts
    unit: int  # weights per budget unit
    slack: int  # budget weights left unused by the grid solution, before the hand-back


def solve_dp(
    curves: np.ndarray,
    sizes: Sequence[int],
    amounts: np.ndarray,
    k: int,
    *,
    budget_units: int = 4096,
    floors: Sequence[int] | None = None,
    caps: Sequence[int] | None = None,
) -> DPSolution:
    """Minimise Σ_l curves[l, a_l] s.t. kept weights <= N - k, then prune exactly k.

    `floors`/`caps`: the fewest / most weights each layer may have pruned (current masks;
    a minimum kept per layer)."""
    L, K = curves.shape
    sizes_a = np.asarray(sizes, dtype=np.int64)
    n = int(sizes_a.sum())
    floor_a = np.zeros(L, np.int64) if floors is None else np.asarray(floors, np.int64)
    unit = max(1, math.ceil(n / budget_units))
    pruned = np.rint(np.outer(sizes_a, amounts)).astype(np.int64)  # [L, K]
    kept = sizes_a[:, None] - pruned
    cost = -(-kept // unit)  # ceil: never under-counts what a layer keeps
    feasible = pruned >= floor_a[:, None]
    if caps is not None:
        feasible &= pruned <= np.asarray(caps, np.int64)[:, None]
    budget = (n - k) // unit
    D = np.where(feasible, curves, np.inf)
    f = np.full(budget + 1, np.inf)
    f[0] = 0.0
    choice = np.zeros((L, budget + 1), dtype=np.int16 if K < 2**15 else np.int32)
    for li in range(L):
        g = np.full(budget + 1, np.inf)
        arg = choice[li]
        for ki in range(K):
            c = int(cost[li, ki])
            if c > budget or not np.isfinite(D[li, ki]):
                continue
            cand = f[: budget + 1 - c] + D[li, ki]
            better = cand < g[c:]
            g[c:][better] = cand[better]
            arg[c:][better] = ki
        f = g
    b = int(np.argmin(f))
    if not np.isfinite(f[b]):
        raise PruneError(f"no per-layer allocation keeps {n - k} weights; lower the sparsity")
    objective = float(f[b])
    idx = [0] * L
    for li in range(L - 1, -1, -1):
        idx[li] = int(choice[li, b])
        b -= int(cost[li, idx[li]])
    counts = [int(pruned[li, idx[li]]) for li in range(L)]
    slack = sum(counts) - k  # >= 0: the grid solution prunes at least k
    _hand_back(counts, idx, curves, pruned, floor_a, slack)
    return DPSolution(counts, idx, objective, unit, slack)


def _hand_back(counts, idx, curves, pruned, floors, extra: int) -> None:
    """Un-prune `extra` weights, steepest distortion slope first, never below floors."""
    slopes = []
    for li, ki in enumerate(idx):
        if ki == 0:
            slopes.append(0.0)
            continue
        span = max(1, pruned[li, ki] - pruned[li, ki - 1])
        slopes.append((curves[li, ki] - curves[li, ki - 1]) / span)
    for li in np.argsort(-np.asarray(slopes), kind="stable"):
        if extra == 0:
            break
        give = min(extra, counts[li] - int(floors[li]))
        counts[li] -= give
        extra -= give


def layer_dp(
    model: nn.Module,
    targets: Sequence[Target],
    k: int,
    *,
    data: torch.Tensor | Iterable | None = None,
    example_input: torch.Tensor | None = None,
    num_samples: int = 1024,
    num_amounts: int = 101,
    budget_units: int = 4096,
    worst_case: bool = False,
    iterative_steps: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    min_keep: int | float = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Masks from the DP allocation; `iterative_steps > 1` re-measures curves between steps
    on a linear sparsity schedule (each step's masks contain the previous ones).

    `min_keep` (a count or a fraction of each layer, as for global magnitude) bars the
    allocations that empty a layer: the additive distortion model cannot see that a fully
    pruned layer disconnects the network, and at 98% sparsity the DP otherwise picks them."""
    if iterative_steps < 1:
        raise PruneError(f"iterative_steps={iterative_steps} must be >= 1")
    if num_amounts < 2:
        raise PruneError(f"num_amounts={num_amounts} must be >= 2")
    inputs = calibration_inputs(data, example_input, num_samples, seed)
    amounts = np.linspace(0.0, 1.0, num_amounts)
    sizes = [t.numel for t in targets]
    caps = [n - keep for n, keep in zip(sizes, min_keep_counts(sizes, min_keep), strict=True)]
    start = sum(pruned_counts(targets))
    masks: list[torch.Tensor] = []
    for step in range(1, iterative_steps + 1):
        k_step = start + round((k - start) * step / iterative_steps)
        curves = distortion_curves(model, targets, inputs, amounts, worst_case=worst_case,
                                   batch_size=batch_size, progress=progress)
        sol = solve_dp(curves, sizes, amounts, k_step, budget_units=budget_units,
                       floors=pruned_counts(targets), caps=caps)
        masks = layerwise_masks(targets, sol.counts)
        if step < iterative_steps:
            apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
    return masks
