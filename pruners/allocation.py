"""Turning per-layer sparsities into exact integer prune counts.

Every pruner prunes exactly round(s·N) weights in total (Python's `round`, as
`torch.nn.utils.prune` does), so fractional per-layer targets are rounded with the
largest-remainder method under per-layer caps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pruners.errors import PruneError


def largest_remainder(
    ideal: Sequence[float], total: int, caps: Sequence[int], floors: Sequence[int] | None = None
) -> list[int]:
    """Integers c_l with floors <= c_l <= caps and sum == total, close to `ideal`.

    Rounds down, then hands the leftover units to the largest fractional parts (ties to the
    earlier layer), skipping capped layers; deterministic.
    """
    ideal_a = np.asarray(ideal, dtype=np.float64)
    caps_a = np.asarray(caps, dtype=np.int64)
    lo = np.zeros_like(caps_a) if floors is None else np.asarray(floors, dtype=np.int64)
    if not lo.sum() <= total <= caps_a.sum():
        raise PruneError(
            f"cannot prune {total} weights: layer limits allow between {lo.sum()} and {caps_a.sum()}"
        )
    base = np.clip(np.floor(ideal_a).astype(np.int64), lo, caps_a)
    rest = total - int(base.sum())
    frac = ideal_a - np.floor(ideal_a)
    while rest != 0:
        step = 1 if rest > 0 else -1
        room = (base < caps_a) if step > 0 else (base > lo)
        if not room.any():
            raise PruneError("internal: no room left to distribute prune counts")
        order = np.argsort(-frac if step > 0 else frac, kind="stable")
        for i in order:
            if rest == 0:
                break
            if room[i]:
                base[i] += step
                rest -= step
        frac = np.zeros_like(frac)
    return [int(c) for c in base]


def water_fill(sizes: Sequence[int], caps: Sequence[float], total: int) -> list[float]:
    """One common sparsity s' with Σ min(s', cap_l)·n_l == total, as per-layer fractions.

    Used by uniform+ (first layer cap 0, last layer cap 0.8): layers below their cap all
    share the same sparsity.
    """
    n = np.asarray(sizes, dtype=np.float64)
    c = np.asarray(caps, dtype=np.float64)
    if total > float((c * n).sum()) + 1e-9:
        raise PruneError(
            f"cannot prune {total} of {int(n.sum())} weights with per-layer limits "
            f"(at most {int((c * n).sum())})"
        )
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if (np.minimum(mid, c) * n).sum() < total:
            lo = mid
        else:
            hi = mid
    return [float(x) for x in np.minimum(hi, c)]


def give_back(counts: list[int], floors: Sequence[int], prices: Sequence[int], slack: int,
              order: Sequence[int]) -> int:
    """Un-prune weights in place, layer by layer in `order`, while the budget removed beyond
    the target (`slack`, in price units: weights, or MACs) covers them; never below `floors`.

    Layer-DP's budget rounding over-prunes by less than one unit per layer; this returns those
    weights to the layers where pruning hurts most, so a weight budget ends exact. Returns the
    slack no layer could take back (0 for unit prices unless floors block it)."""
    for li in order:
        price = int(prices[li])
        if slack <= 0:
            break
        if price <= 0:
            continue
        give = min(slack // price, counts[li] - int(floors[li]))
        if give > 0:
            counts[li] -= give
            slack -= give * price
    return slack
