"""Global magnitude pruning (Gupta et al.): one threshold over all selected layers.

Selection is exact (k = round(s·N) pruned) and goes through `cuda_ext`, which finds the
k-th smallest |w| by radix select over the tensor list, so no concatenation of all weights
is ever built. Ties at the threshold are pruned in layer order, then flattened-index order.
`cuda_ext` ranks fp32/fp16/bf16 exactly; float64 magnitudes would lose their order in its
float32 keys, so they take `_exact_masks`, the same rule on one float64 concatenation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import cuda_ext
from cuda_ext.ops import SUPPORTED
from pruners.errors import PruneError
from pruners.selection import Target

if TYPE_CHECKING:
    from pruners.lottery import Span


def _exact_masks(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep-masks pruning the k smallest |w|, ties in layer then flattened-index order, for any
    float dtype: the k-th smallest of one concatenation in float64 (exact for every float)."""
    flat = [t.detach().reshape(-1).abs().to(torch.float64) for t in tensors]
    every = torch.cat(flat)
    if torch.isnan(every).any():
        raise PruneError("a weight is NaN; magnitudes of NaN weights are undefined")
    if not 0 <= k <= every.numel():
        raise PruneError(f"k={k} is out of range; expected an integer in [0, {every.numel()}]")
    threshold = every.kthvalue(k).values if k else every.new_tensor(-1.0)
    quota = k - int((every < threshold).sum())
    masks = []
    for f, t in zip(flat, tensors, strict=True):
        pruned = f < threshold
        ties = (f == threshold).nonzero().flatten()
        take = min(quota, ties.numel())
        pruned[ties[:take]] = True
        quota -= take
        masks.append((~pruned).reshape(t.shape))
    return masks


def _ranked_by_cuda_ext(tensors: Sequence[torch.Tensor]) -> bool:
    return all(t.dtype in SUPPORTED for t in tensors)


def magnitude_masks(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """`cuda_ext.global_magnitude_masks` for every float dtype (float64 by `_exact_masks`)."""
    if _ranked_by_cuda_ext(tensors):
        return cuda_ext.global_magnitude_masks(tensors, k)
    return _exact_masks(tensors, k)


def iter_magnitude_masks(tensors: Sequence[torch.Tensor], k: int) -> Iterator[torch.Tensor]:
    """`cuda_ext.iter_global_magnitude_masks` for every float dtype (float64 all at once)."""
    if _ranked_by_cuda_ext(tensors):
        return cuda_ext.iter_global_magnitude_masks(tensors, k)
    return iter(_exact_masks(tensors, k))


def min_keep_counts(sizes: Sequence[int], min_keep: int | float) -> list[int]:
    """Per-layer minimum kept weights: an absolute count, or a fraction of each layer."""
    if isinstance(min_keep, float) and not min_keep.is_integer():
        if not 0.0 <= min_keep <= 1.0:
            raise PruneError(f"min_keep={min_keep} must be a count or a fraction in [0, 1]")
        return [min(n, math.ceil(min_keep * n)) for n in sizes]
    if min_keep < 0:
        raise PruneError(f"min_keep={min_keep} must be >= 0")
    return [min(n, int(min_keep)) for n in sizes]


def check_min_keep(sizes: Sequence[int], k: int, min_keep: int | float) -> list[int]:
    """The per-layer floors, or PruneError when they keep more than pruning k leaves."""
    floors = min_keep_counts(sizes, min_keep)
    n = sum(sizes)
    if sum(floors) > n - k:
        raise PruneError(
            f"min_keep keeps {sum(floors)} weights but pruning {k} of {n} leaves only {n - k}"
        )
    return floors


def global_magnitude(
    tensors: Sequence[torch.Tensor], k: int, min_keep: int | float = 0
) -> list[torch.Tensor]:
    """Keep-masks pruning exactly k weights by global |w|, keeping >= min_keep per layer.

    The minimum-threshold rule (Gupta et al.) against layer collapse: layers that the global
    threshold would push below their minimum keep exactly their minimum (their largest
    weights), and the global threshold is recomputed over the remaining layers until no layer
    falls below; the total pruned stays exactly k.
    """
    sizes = [t.numel() for t in tensors]
    floors = check_min_keep(sizes, k, min_keep)
    fixed: set[int] = set()
    while True:
        free = [i for i in range(len(tensors)) if i not in fixed]
        k_free = k - sum(sizes[i] - floors[i] for i in fixed)
        masks_free = magnitude_masks([tensors[i] for i in free], k_free) if free else []
        low = [
            i for i, m in zip(free, masks_free, strict=True) if floors[i] and int(m.count_nonzero()) < floors[i]
        ]
        if not low:
            break
        fixed.update(low)
    masks: list[torch.Tensor | None] = [None] * len(tensors)
    for i, m in zip(free, masks_free, strict=True):
        masks[i] = m
    for i in fixed:
        masks[i] = magnitude_masks([tensors[i]], sizes[i] - floors[i])[0]
    return masks  # type: ignore[return-value]


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - t/n)^3 for t = 1..n; ends at s_f."""
    if steps < 1:
        raise PruneError(f"steps={steps} must be >= 1")
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


FinetuneFn = Callable[[nn.Module, "Span", Callable[[], None]], None]
"""`finetune(model, span, keep_masks)`: train `model` for `span` (a `pruners.Span`, e.g.
`200it` or `1ep`), calling `keep_masks()` after every optimizer step."""


def gradual_magnitude(
    model: nn.Module,
    targets: Sequence[Target],
    sparsity: float,
    *,
    steps: int = 10,
    initial_sparsity: float = 0.0,
    min_keep: int | float = 0,
    finetune: FinetuneFn | None = None,
    finetune_steps: str | Span = "1ep",
    on_step: Callable[[int, nn.Module], Any] | None = None,
) -> list[torch.Tensor]:
    """Gradual global magnitude pruning on the cubic schedule, fine-tuning between steps.

    After each pruning step `finetune(model, finetune_steps, keep_masks)` trains (skipped for a
    zero span: then this is one-shot pruning reached in steps), then `on_step(step, model)`
    reports. Without fine-tuning the weights never change between steps, so the masks equal
    one-shot global magnitude's. Returns the final masks (already applied).
    """
    from pruners.lottery import parse_span  # pruners.lottery imports this module
    from pruners.masks import MaskKeeper, apply_masks

    span = parse_span(finetune_steps, "finetune_steps")
    n = sum(t.numel for t in targets)
    masks: list[torch.Tensor] = []
    for step, s in enumerate(cubic_schedule(sparsity, steps, initial_sparsity), start=1):
        masks = global_magnitude([t.tensor for t in targets], round(s * n), min_keep)
        masks = [m & old if (old := t.mask) is not None else m for m, t in zip(masks, targets, strict=True)]
        apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
        if finetune is not None and span.value:
            finetune(model, span, MaskKeeper(model))
        if on_step is not None:
            on_step(step, model)
    return masks
