"""Architecture samples that cover the whole size range of a search space.

Uniform sampling piles archs up in the middle of the size range (each size is a sum over
many dimensions), so a latency predictor fitted on it never sees the small and large ends.
We draw a pool tilted towards small and large archs, then pick evenly from equal-width bins
of log(size) between the smallest and largest arch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from supernets.space import Arch, SearchSpace


def tilted_pool(space: SearchSpace, size: int, rng: np.random.Generator) -> list[Arch]:
    """`size` distinct canonical archs (subnets) incl. smallest and largest; each draws its
    choices biased by p~U(0,1)."""
    seen: dict[str, Arch] = {}
    for arch in (space.smallest(), space.largest()):
        seen[space.canonical_json(arch)] = arch
    tries = 0
    while len(seen) < size and tries < 20 * size:
        tries += 1
        p = rng.uniform()
        idx = [int(rng.binomial(len(d.choices) - 1, p)) for d in space.dims]
        arch = space.canonical(space.decode(idx))
        seen.setdefault(space.canonical_json(arch), arch)
    return list(seen.values())


def stratified_indices(
    sizes: Sequence[float], n: int, bins: int, rng: np.random.Generator
) -> list[int]:
    """Pick `n` indices evenly over equal-width bins of log(size); short bins pass their quota on."""
    values = np.log(np.maximum(np.asarray(sizes, dtype=np.float64), 1e-12))
    if n >= len(values):
        return list(range(len(values)))
    edges = np.linspace(values.min(), values.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    members = [list(rng.permutation(np.flatnonzero(which == b))) for b in range(bins)]
    # Always keep the two extremes, then deal the rest round-robin over the bins.
    chosen = list(dict.fromkeys([int(np.argmin(values)), int(np.argmax(values))]))[:n]
    for b in range(bins):
        members[b] = [i for i in members[b] if i not in chosen]
    while len(chosen) < n:
        for b in range(bins):
            if members[b] and len(chosen) < n:
                chosen.append(int(members[b].pop()))
    return chosen


def stratified_sample(
    space: SearchSpace,
    size_fn: Callable[[Arch], float],
    n: int,
    seed: int,
    pool_factor: int = 3,
    bins: int = 10,
) -> list[Arch]:
    """`n` archs spread evenly over the size range measured by `size_fn` (e.g. MACs)."""
    rng = np.random.default_rng(seed)
    pool = tilted_pool(space, max(n * pool_factor, n), rng)
    sizes = [size_fn(arch) for arch in pool]
    return [pool[i] for i in stratified_indices(sizes, n, bins, rng)]
