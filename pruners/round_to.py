"""Channel counts on a grid of multiples (`ShrinkOptions.round_to`), and the exact
allocations over such grids.

Odd channel counts (31, 19, 10) are slow: onnxruntime's convolution kernels work on blocks of
channels, so a tiny mbv3 subnet shrunk to odd counts ran ~2-3x slower than the dense subnet.
With `round_to=r` a pruned group of C channels keeps a multiple of r channels, at least r and
at least its `min_keep`, and fewer than C; an untouched group keeps its C (removing nothing
is always allowed, so a group smaller than r, or one with no such multiple, stays whole).
`removal_grid` lists the channel counts a group may lose; r = 1 is every count up to the cap.

Every allocation over grids here is an exact dynamic programme over the total channels
removed (`min_by_total`), so "as close as possible to the target" is a minimum, not a
heuristic: `round_counts` rounds a method's exact counts to the grid, and
`pruners.shrink_dp` minimises the distortion over the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def removal_grid(channels: int, keep: int, round_to: int | None) -> np.ndarray:
    """The channel counts a group of `channels` may lose, ascending from 0: those that leave
    a multiple of `round_to` (None: 1) that is >= round_to and >= `keep`."""
    r = round_to or 1
    lo = max(r, -(-keep // r) * r)
    kept = np.arange(lo, channels, r, dtype=np.int64)  # multiples below C (C itself: lose 0)
    return np.concatenate([np.zeros(1, np.int64), channels - kept[::-1]])


def snap(grid: np.ndarray, count: float) -> int:
    """The grid point nearest `count` (ties: the smaller)."""
    i = int(np.argmin(np.abs(grid - count)))
    return int(grid[i])


def bracket(grid: np.ndarray, count: float) -> tuple[int, int]:
    """The grid points just below and just above `count` (both the end if it lies outside)."""
    hi = int(np.searchsorted(grid, count - 1e-9, side="left"))
    if hi == len(grid):
        return int(grid[-1]), int(grid[-1])
    if grid[hi] <= count + 1e-9:
        return int(grid[hi]), int(grid[hi])
    return int(grid[max(hi - 1, 0)]), int(grid[hi])


def min_by_total(costs: Sequence[np.ndarray], values: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, Callable[[int], list[int]]]:
    """f[t] = min Σ_g values[g][i_g] over one option i_g per group with Σ_g costs[g][i_g] == t
    (inf: no such choice), and `pick(t)`: the option indices of that minimum.

    costs: non-negative integers per option. Ties keep the earlier option of a group (list the
    options in the order ties should prefer)."""
    total = sum(int(np.max(c)) for c in costs) if costs else 0
    f = np.full(total + 1, np.inf)
    f[0] = 0.0
    choice = np.zeros((len(costs), total + 1), np.int32)
    for g, (cost, value) in enumerate(zip(costs, values, strict=True)):
        new = np.full(total + 1, np.inf)
        for i, (c, v) in enumerate(zip(cost.tolist(), np.asarray(value, np.float64).tolist(), strict=True)):
            cand = f[: total + 1 - c] + v
            better = cand < new[c:]
            new[c:][better] = cand[better]
            choice[g, c:][better] = i
        f = new

    def pick(t: int) -> list[int]:
        out = [0] * len(costs)
        for g in range(len(costs) - 1, -1, -1):
            out[g] = int(choice[g, t])
            t -= int(costs[g][out[g]])
        return out

    return f, pick


def closest_total(f: np.ndarray, target: int) -> int:
    """The reachable total (finite f) nearest `target`; ties: the smaller (fewer removed)."""
    reachable = np.flatnonzero(np.isfinite(f))
    return int(reachable[np.argmin(np.abs(reachable - target))])  # argmin: the first, smaller


def round_counts(counts: Sequence[float], grids: Sequence[np.ndarray], target: int) -> list[int]:
    """Each group's count rounded down or up to its grid (its neighbours on the grid): of all
    those choices, the one whose total is closest to `target` (ties: the smaller total), then
    the least Σ (rounded - count)²; further ties round the earlier choice down."""
    options, values = [], []
    for count, grid in zip(counts, grids, strict=True):
        lo, hi = bracket(grid, count)
        opts = np.asarray(sorted({lo, hi}), np.int64)
        options.append(opts)
        values.append((opts - count) ** 2)
    f, pick = min_by_total(options, values)
    return [int(o[i]) for o, i in zip(options, pick(closest_total(f, target)), strict=True)]


__all__ = ["bracket", "closest_total", "min_by_total", "removal_grid", "round_counts", "snap"]
