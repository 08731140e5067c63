"""Layer-adaptive magnitude pruning solved by dynamic programming (Xu et al., ICCV 2023).

1. Distortion curves (`pruners.dp_curves`): for each layer l and amount a_k (K values in [0, 1])
   prune only layer l by magnitude and measure the output MSE against the model as it is now,
   on calibration inputs (or N(0,1) inputs in zero-data mode). By default (`curves="adaptive"`)
   only the network after layer l runs, from cached activations, several amounts per forward;
   amounts are measured on a coarse grid, then coarse-to-fine only where the DP could still
   pick: next to every amount the DP picks, and in every span between measured amounts that a
   Lagrangian reduced-cost test (`could_improve`) cannot rule out, taking unmeasured values to
   be at least the smaller measured one around them (curves grow). It stops when the DP's picks
   and their neighbours are measured and nothing is left open; the rest is interpolated (PCHIP)
   and cannot hold a better allocation unless a curve dips between two measured amounts.
   `refine_tol` also measures where a curve bends (PCHIP and the chord differ by more than
   `refine_tol` x the DP objective / L). `curves="reference"` measures every layer x every
   amount with a full forward, as the paper's code does; `cached` every amount from the cache.
2. Additivity: the total distortion is taken as Σ_l D_l(a_l).
3. DP over layers minimising Σ D_l subject to a budget: kept weights (`budget="params"`), or
   kept multiply-accumulates (`budget="flops"`, the paper's `--flop_budget`), each layer's MACs
   per weight from `torch.utils.flop_counter`. The budget is counted in B units (a layer's cost
   is rounded *up* to whole units, so every DP solution is feasible): O(L·K·B) time, O(L·B)
   memory. The reference code counts single weights (B = N), > 10 GB on ResNet-50.
4. Exactness: the unit rounding leaves at most L units unspent; they are handed back to the
   layers with the steepest distortion slope, so exactly round(s·N) weights are pruned
   (`params`), or the fewest weights that remove at least s of the selected layers' MACs
   (`flops`: the sparsity argument is then a MAC fraction).
5. Iterative mode (the paper's `iterate.py`): `iterative_steps` DP steps, each pruning the same
   fraction of what remains, with curves re-measured on the pruned model and `finetune_steps`
   optimizer steps of the caller's `finetune` between steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruners.allocation import give_back
from pruners.dp_curves import CurveSampler, Progress, distortion_curves, magnitude_mask
from pruners.errors import PruneError
from pruners.lottery import Span
from pruners.magnitude import FinetuneFn, min_keep_counts
from pruners.masks import MaskKeeper, apply_masks
from pruners.options import LayerDPOptions
from pruners.selection import Target

MAX_ROUNDS = 16  # DP-guided refinement sweeps; each is one dense forward plus what it measures


def calibration_inputs(
    data: torch.Tensor | Iterable | None,
    example_input: torch.Tensor | None,
    num_samples: int,
    seed: int = 0,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """First `num_samples` inputs of `data` (a tensor or an iterable of (x, y) batches),
    or N(0,1) inputs shaped like `example_input` (zero-data mode); in `like`'s dtype and device
    (the model's weights), so float64 models get float64 inputs."""
    if data is None:
        if example_input is None:
            raise PruneError("layer_dp needs calibration `data` or an `example_input` shape")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((num_samples, *example_input.shape[1:]), generator=gen)
        ref = example_input if like is None else like
        return x.to(ref.device, ref.dtype if ref.is_floating_point() else x.dtype)
    if isinstance(data, torch.Tensor):
        x = data[:num_samples]
    else:
        xs, have = [], 0
        for batch in data:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            xs.append(xb)
            have += len(xb)
            if have >= num_samples:
                break
        if not xs:
            raise PruneError("calibration data is empty")
        x = torch.cat(xs)[:num_samples]
    if like is not None and x.is_floating_point():
        x = x.to(like.device, like.dtype)
    return x


def layer_macs(model: nn.Module, targets: Sequence[Target], example: torch.Tensor) -> list[int]:
    """Multiply-accumulates of each target's module on one input (FLOPs / 2, as counted by
    `torch.utils.flop_counter`). A module the counter cannot see on its own (a weight used
    inside a fused op of its parent) counts 0."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example[:1])
    finally:
        model.train(was)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return [int(sum(counts.get(f"{root}.{t.module_name}" if t.module_name else root, {}).values())) // 2
            for t in targets]


@dataclass
class DPSolution:
    """Per-layer prune counts and the DP's view of the solution."""

    counts: list[int]
    grid_index: list[int]
    objective: float  # Σ D_l at the chosen grid amounts
    unit: int  # budget (weights, or MACs) per unit
    slack: int  # budget removed beyond the target by the grid solution, before the hand-back


def solve_dp(
    curves: np.ndarray,
    sizes: Sequence[int],
    amounts: np.ndarray,
    k: int,
    *,
    budget_units: int = 4096,
    floors: Sequence[int] | None = None,
    caps: Sequence[int] | None = None,
    prices: Sequence[int] | None = None,
) -> DPSolution:
    """Minimise Σ_l curves[l, a_l] s.t. Σ_l price_l·kept_l <= Σ_l price_l·n_l - k, then hand
    back what the unit rounding over-pruned.

    `prices`: budget per weight of each layer (None: 1, so k counts weights and exactly k are
    pruned; MACs per weight for a FLOPs budget, so k counts MACs removed, at least k).
    `floors`/`caps`: the fewest / most weights each layer may have pruned (current masks;
    a minimum kept per layer)."""
    L, K = curves.shape
    price = np.ones(L, np.int64) if prices is None else np.asarray(prices, np.int64)
    floor_a = np.zeros(L, np.int64) if floors is None else np.asarray(floors, np.int64)
    pruned, cost, budget, unit = _budget(sizes, amounts, k, budget_units, price)
    total = int((np.asarray(sizes, np.int64) * price).sum())
    D = np.where(_feasible(pruned, floor_a, caps), curves, np.inf)
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
        raise PruneError(f"no per-layer allocation keeps {total - k} of {total} budget; "
                         "lower the sparsity")
    objective = float(f[b])
    idx = [0] * L
    for li in range(L - 1, -1, -1):
        idx[li] = int(choice[li, b])
        b -= int(cost[li, idx[li]])
    counts = [int(pruned[li, idx[li]]) for li in range(L)]
    slack = int(sum(c * p for c, p in zip(counts, price, strict=True))) - k  # >= 0
    steepest = np.argsort(-_slopes(idx, curves, pruned, price), kind="stable")
    give_back(counts, floor_a, price, slack, steepest)
    return DPSolution(counts, idx, objective, unit, slack)


def _budget(sizes: Sequence[int], amounts: np.ndarray, k: int, budget_units: int,
            price: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pruned weights [L, K], kept cost in whole units [L, K] (rounded up: never under-counts
    what a layer keeps), the kept budget in units, and the unit."""
    sizes_a = np.asarray(sizes, dtype=np.int64)
    total = int((sizes_a * price).sum())
    unit = max(1, math.ceil(total / budget_units))
    pruned = np.rint(np.outer(sizes_a, amounts)).astype(np.int64)
    cost = -(-((sizes_a[:, None] - pruned) * price[:, None]) // unit)
    return pruned, cost, (total - k) // unit, unit


def _feasible(pruned: np.ndarray, floors: np.ndarray, caps: Sequence[int] | None) -> np.ndarray:
    ok = pruned >= floors[:, None]
    if caps is not None:
        ok &= pruned <= np.asarray(caps, np.int64)[:, None]
    return ok


def could_improve(values: np.ndarray, known: np.ndarray, cost: np.ndarray, budget: int,
                  objective: float, feasible: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """[L, K] bool: unmeasured amounts that might belong to an allocation better than
    `objective` (Lagrangian reduced-cost test). An unmeasured D is bounded below by
    (1 - margin) x the smaller measured value around it (curves grow, up to noise); a point
    can be in a better allocation only if its reduced cost D + λ·cost exceeds its layer's
    minimum by at most the duality gap objective - dual(λ), for the λ that maximises dual(λ)."""
    lb = np.where(known, values, np.inf)
    for li in range(len(values)):
        idx = np.flatnonzero(known[li])
        for i, j in zip(idx[:-1], idx[1:], strict=True):
            lb[li, i + 1 : j] = (1 - margin) * min(values[li, i], values[li, j])
    lb = np.where(feasible, lb, np.inf)
    best_dual, lam = -np.inf, 0.0
    scale = objective / max(1, budget)
    for candidate in np.concatenate([[0.0], scale * np.logspace(-4, 4, 161)]):
        dual = float((lb + candidate * cost).min(1).sum() - candidate * budget)
        if dual > best_dual:
            best_dual, lam = dual, candidate
    reduced = lb + lam * cost
    return ~known & (reduced - reduced.min(1, keepdims=True) <= objective - best_dual)


def _slopes(idx: Sequence[int], curves: np.ndarray, pruned: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Distortion per budget unit of each layer's last grid step (0 at amount 0)."""
    out = np.zeros(len(idx))
    for li, ki in enumerate(idx):
        if ki > 0:
            span = max(1, int(pruned[li, ki] - pruned[li, ki - 1]) * max(1, int(price[li])))
            out[li] = (curves[li, ki] - curves[li, ki - 1]) / span
    return out


@dataclass
class DPStep:
    """One DP step: its solution, the curves it used and how they were measured."""

    solution: DPSolution
    curves: np.ndarray
    sampler: CurveSampler
    rounds: int = 0
    notes: list[str] = field(default_factory=list)


def dp_step(model: nn.Module, targets: Sequence[Target], inputs: torch.Tensor, k: int,
            o: LayerDPOptions, *, prices: Sequence[int] | None = None,
            on_progress: Progress | None = None, label: str = "layer_dp",
            sampler: CurveSampler | None = None) -> DPStep:
    """Measure the curves (as `o.curves` says) on the model as it is and solve the DP for k.
    `sampler`: measure through this one instead (e.g. one replaying stored curves, to compare
    refinement schedules without forwards); its grid must have `o.num_amounts` amounts."""
    amounts = np.linspace(0.0, 1.0, o.num_amounts)
    method = "reference" if o.curves == "reference" else "cached"
    if sampler is None:
        sampler = CurveSampler(model, targets, inputs, amounts, worst_case=o.worst_case,
                               batch_size=o.batch_size, amount_batch=o.amount_batch,
                               method=method, on_progress=on_progress)
    sizes = [t.numel for t in targets]
    caps = [n - keep for n, keep in zip(sizes, min_keep_counts(sizes, o.min_keep), strict=True)]

    def solve() -> DPSolution:
        return solve_dp(sampler.curves(), sizes, amounts, k, budget_units=o.budget_units,
                        floors=sampler.floors, caps=caps, prices=prices)

    if o.curves != "adaptive":
        every = list(range(len(amounts)))
        sampler.sweep(lambda li: every, label=f"{label} curves ({o.curves})")
        return DPStep(solve(), sampler.curves(), sampler)
    coarse = sampler.coarse(o.coarse_amounts)
    sampler.sweep(lambda li: coarse, label=f"{label} coarse curves")
    sol = solve()
    tol = o.refine_tol * sol.objective / len(targets)

    def near(li: int) -> list[int]:  # the DP's pick and its grid neighbours
        ki = sol.grid_index[li]
        return [j for j in (ki - 1, ki, ki + 1) if 0 <= j < len(amounts)]

    bends = (lambda li: sampler.bends(li, tol, below=2 * sol.objective)) if tol > 0 else None
    sampler.sweep(near, refine=bends, label=f"{label} refine")
    price = np.ones(len(targets), np.int64) if prices is None else np.asarray(prices, np.int64)
    pruned, cost, budget, _ = _budget(sizes, amounts, k, o.budget_units, price)
    feasible = _feasible(pruned, np.asarray(sampler.floors, np.int64), caps)
    rounds = 1
    while rounds < MAX_ROUNDS:
        sol = solve()
        open_ = could_improve(sampler.values, sampler.known, cost, budget, sol.objective, feasible)
        missing = {li: sorted({j for j in near(li) if not sampler.known[li, j]}
                              | set(_span_middles(sampler.known[li], open_[li])))
                   for li in range(len(targets))}
        if not any(missing.values()):
            break
        sampler.sweep(missing.__getitem__, label=f"{label} refine at the DP's picks")
        rounds += 1
    notes = [] if rounds < MAX_ROUNDS else [f"stopped after {MAX_ROUNDS} refinement sweeps"]
    return DPStep(sol, sampler.curves(), sampler, rounds, notes)


def _span_middles(known: np.ndarray, wanted: np.ndarray) -> list[int]:
    """Per span between measured amounts holding wanted ones: the wanted one nearest its middle."""
    idx = np.flatnonzero(known)
    out = []
    for i, j in zip(idx[:-1], idx[1:], strict=True):
        inside = np.flatnonzero(wanted[i + 1 : j]) + i + 1
        if len(inside):
            out.append(int(inside[np.argmin(np.abs(inside - (i + j) / 2))]))
    return out


def _finetune_for(model: nn.Module, finetune: FinetuneFn, step: int, steps: int) -> int:
    """Run `finetune(model, Span(steps, "it"), keep_masks)` (the FinetuneFn contract, shared
    with gradual magnitude: `keep_masks()` after every optimizer step); returns steps run."""
    keeper = MaskKeeper(model)
    done = 0

    def keep_masks() -> None:
        nonlocal done
        keeper()
        done += 1

    finetune(model, Span(steps, "it"), keep_masks)
    model.eval()
    return done


def layer_dp(
    model: nn.Module,
    targets: Sequence[Target],
    k: int,
    options: LayerDPOptions | None = None,
    *,
    data: torch.Tensor | Iterable | None = None,
    example_input: torch.Tensor | None = None,
    finetune: FinetuneFn | None = None,
    on_progress: Progress | None = None,
) -> list[torch.Tensor]:
    """Masks from the DP allocation pruning k of the targets' weights (`budget="params"`) or
    k/N of their MACs (`budget="flops"`). `iterative_steps > 1` prunes the same fraction of
    what remains per step (each step's masks contain the previous ones), re-measuring the
    curves and fine-tuning `finetune_steps` steps in between.

    `min_keep` (a count or a fraction of each layer, as for global magnitude) bars the
    allocations that empty a layer: the additive distortion model cannot see that a fully
    pruned layer disconnects the network, and at 98% sparsity the DP otherwise picks them."""
    o = options or LayerDPOptions()
    if o.finetune_steps and o.iterative_steps > 1 and finetune is None:
        raise PruneError("layer_dp finetune_steps needs a `finetune` function (the prune runner "
                         "supplies one); pass finetune=... or finetune_steps=0")
    like = targets[0].param.detach()
    inputs = calibration_inputs(data, example_input, o.num_samples, o.seed, like=like)
    sizes = np.asarray([t.numel for t in targets], np.int64)
    prices = None
    if o.budget == "flops":
        macs = layer_macs(model, targets, inputs)
        prices = [round(m / n) for m, n in zip(macs, sizes, strict=True)]
        if not any(prices):
            raise PruneError("budget=flops: torch.utils.flop_counter counts no MACs in the selected "
                             "layers; use budget=params")
    price = np.ones(len(targets), np.int64) if prices is None else np.asarray(prices, np.int64)
    total = int((sizes * price).sum())
    goal = k if prices is None else math.ceil(k / int(sizes.sum()) * total)
    masks: list[torch.Tensor] = []
    for step in range(1, o.iterative_steps + 1):
        floors = np.asarray([0 if (m := t.mask) is None else m.numel() - int(m.count_nonzero())
                             for t in targets], np.int64)
        if step == 1:
            start = int((floors * price).sum())
        k_step = _geometric(total, start, goal, step, o.iterative_steps)
        label = "layer_dp" if o.iterative_steps == 1 else f"layer_dp step {step}/{o.iterative_steps}"
        result = dp_step(model, targets, inputs, k_step, o, prices=prices, on_progress=on_progress,
                         label=label)
        masks = [magnitude_mask(t, c) for t, c in zip(targets, result.solution.counts, strict=True)]
        if step < o.iterative_steps:
            apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
            if o.finetune_steps:
                assert finetune is not None  # checked above
                if _finetune_for(model, finetune, step, o.finetune_steps) == 0:
                    raise PruneError("layer_dp finetune_steps: the supplied finetune ran no "
                                     "optimizer step (does the runner fine-tune, finetune.epochs > 0?)")
    return masks


def _geometric(total: int, start: int, goal: int, step: int, steps: int) -> int:
    """Budget removed after `step` of `steps`: each step keeps the same fraction of what the
    previous one kept (the paper's 1 - (1 - amount)^iteration schedule), ending at `goal`."""
    if step == steps or goal <= start:
        return max(goal, start)
    kept0, kept_end = total - start, total - goal
    return total - round(kept0 * (kept_end / kept0) ** (step / steps))


__all__ = ["DPSolution", "DPStep", "calibration_inputs", "distortion_curves", "dp_step",
           "layer_dp", "layer_macs", "solve_dp"]
