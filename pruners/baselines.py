"""Baseline allocations: uniform, uniform+, ERK, LAMP and random.

Uniform, uniform+ and ERK fix a per-layer sparsity and prune by magnitude inside each layer;
LAMP and random rank all weights globally by a score. All prune exactly round(s·N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import cuda_ext
from cuda_ext.ops import SUPPORTED
from nasbench_core.seeding import torch_generator
from pruners.allocation import largest_remainder, water_fill
from pruners.errors import PruneError
from pruners.magnitude import magnitude_masks
from pruners.selection import Target


def pruned_counts(targets: Sequence[Target]) -> list[int]:
    """Weights already pruned in each layer (masks only grow)."""
    return [0 if (m := t.mask) is None else m.numel() - int(m.count_nonzero()) for t in targets]


def layerwise_masks(
    targets: Sequence[Target], counts: Sequence[int], score: str = "magnitude", seed: int = 0
) -> list[torch.Tensor]:
    """Prune counts[l] weights in layer l by magnitude (or at random), one layer at a time."""
    if score not in ("magnitude", "random"):
        raise PruneError(f"score={score!r} is unknown; expected 'magnitude' or 'random'")
    gen = torch_generator(seed)
    masks = []
    for t, c in zip(targets, counts, strict=True):
        s = t.tensor if score == "magnitude" else random_scores(t, gen)
        masks.append(magnitude_masks([s], int(c))[0])
    return masks


def random_scores(target: Target, gen: torch.Generator) -> torch.Tensor:
    """Scores in [1, 2) for kept weights and 0 for already-pruned ones."""
    s = torch.rand(target.param.shape, generator=gen).add_(1.0).to(target.param.device)
    mask = target.mask
    return s if mask is None else s * mask


def uniform(targets: Sequence[Target], k: int) -> list[torch.Tensor]:
    n = sum(t.numel for t in targets)
    s = k / n
    counts = largest_remainder(
        [s * t.numel for t in targets], k, [t.numel for t in targets], pruned_counts(targets)
    )
    return layerwise_masks(targets, counts)


def uniform_plus_caps(targets: Sequence[Target], k: int, last_keep: float = 0.2) -> tuple[list[float], list[int]]:
    """uniform+'s per-layer sparsity caps and the integer prune caps they allow, or PruneError
    when they cannot prune k weights."""
    if len(targets) < 2:
        raise PruneError("uniform_plus needs at least two prunable layers (first and last)")
    sizes = [t.numel for t in targets]
    caps = [1.0] * len(targets)
    if targets[0].param.dim() >= 3:
        caps[0] = 0.0
    caps[-1] = 1.0 - last_keep
    # weights an earlier pruning removed stay removed, inside the caps or not, and count to k
    int_caps = [max(math.floor(c * n), p) for c, n, p in zip(caps, sizes, pruned_counts(targets), strict=True)]
    if k > sum(int_caps):
        dense = "the first (conv) layer dense, " if caps[0] == 0.0 else ""
        raise PruneError(
            f"uniform_plus keeps {dense}the last layer at >= {last_keep:.0%}: it can prune at most "
            f"{sum(int_caps)} of {sum(sizes)} weights ({sum(int_caps) / sum(sizes):.1%}), not {k}"
        )
    return caps, int_caps


def uniform_plus(targets: Sequence[Target], k: int, last_keep: float = 0.2) -> list[torch.Tensor]:
    """Uniform (Gale et al. 2019) with a conv first layer dense and the last layer keeping at
    least `last_keep` of its weights.

    As in the reference (LAMP's `_compute_unifplus_amounts`, which tests for a 4-d kernel), only
    a convolution stem stays dense (a weight of 3+ dims: Conv1d/2d/3d); a Linear first layer
    (an MLP such as LeNet-300-100, most of whose weights it holds) is pruned like the others.
    """
    caps, int_caps = uniform_plus_caps(targets, k, last_keep)
    sizes = [t.numel for t in targets]
    fracs = water_fill(sizes, caps, k)
    counts = largest_remainder([f * n for f, n in zip(fracs, sizes, strict=True)], k, int_caps,
                               pruned_counts(targets))
    return layerwise_masks(targets, counts)


def erk_densities(shapes: Sequence[torch.Size], density: float) -> list[float]:
    """Erdős–Rényi-Kernel densities (Evci et al., RigL): d_l ∝ Σ dims / Π dims, capped at 1.

    ε is found so that the kept weights total density·N; layers that would exceed 1 become
    dense and the rest is re-solved (bisection on ε does both at once).
    """
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    target = density * sum(sizes)
    lo, hi = 0.0, 1.0 / min(raw)
    for _ in range(200):
        eps = (lo + hi) / 2
        kept = sum(min(1.0, eps * r) * n for r, n in zip(raw, sizes, strict=True))
        lo, hi = (eps, hi) if kept < target else (lo, eps)
    return [min(1.0, hi * r) for r in raw]


def erk(targets: Sequence[Target], k: int, score: str = "magnitude", seed: int = 0):
    sizes = [t.numel for t in targets]
    dens = erk_densities([t.param.shape for t in targets], 1.0 - k / sum(sizes))
    counts = largest_remainder(
        [(1.0 - d) * n for d, n in zip(dens, sizes, strict=True)], k, sizes,
        pruned_counts(targets),
    )
    return layerwise_masks(targets, counts, score=score, seed=seed)


def lamp_scores(tensor: torch.Tensor) -> torch.Tensor:
    """`cuda_ext.lamp_scores`, and the same scores in float64 for float64 weights (ties in
    flattened-index order, as there)."""
    if tensor.dtype in SUPPORTED:
        return cuda_ext.lamp_scores(tensor)
    sq = tensor.detach().reshape(-1).to(torch.float64).square()
    order = torch.sort(sq, stable=True).indices
    tail = sq[order].flip(0).cumsum(0).flip(0)  # Σ_{v≥u} over the ascending order
    scores = torch.empty_like(sq)
    scores[order] = sq[order] / tail
    return scores.nan_to_num(0.0).reshape(tensor.shape)


def lamp(targets: Sequence[Target], k: int) -> list[torch.Tensor]:
    """LAMP (Lee et al. 2021): global ranking of W[u]² / Σ_{v≥u} W[v]² per layer."""
    return magnitude_masks([lamp_scores(t.tensor) for t in targets], k)


def random_global(targets: Sequence[Target], k: int, seed: int = 0) -> list[torch.Tensor]:
    """Uniformly random weights over all layers (already-pruned ones stay pruned)."""
    gen = torch_generator(seed)
    return magnitude_masks([random_scores(t, gen) for t in targets], k)
