"""Public ops: validate arguments once, then run the compiled kernels or the PyTorch path.

Both paths give identical selections and masks; `backend()` says which one is active.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from cuda_ext import _loader, _torch_ops
from nasbench_core.errors import UserError

SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def backend() -> str:
    """Name of the active path: "cuda" (GPU kernels), "cpp" (CPU kernels) or "torch" (fallback)."""
    return _loader.active_backend()


def _check(tensors: Sequence[Tensor], what: str = "tensors") -> list[Tensor]:
    if isinstance(tensors, Tensor):
        raise UserError(f"{what} must be a sequence of tensors, got a single tensor")
    out = list(tensors)
    for i, t in enumerate(out):
        if not isinstance(t, Tensor):
            raise UserError(f"{what}[{i}] is {type(t).__name__}, expected a torch.Tensor")
        if t.dtype not in SUPPORTED:
            raise UserError(f"{what}[{i}] has dtype {t.dtype}; expected float32, float16 or bfloat16")
    return [t.detach() for t in out]


def _check_masks(tensors: list[Tensor], masks: Sequence[Tensor], what: str = "masks") -> list[Tensor]:
    masks = list(masks)
    if len(masks) != len(tensors):
        raise UserError(f"got {len(masks)} {what} for {len(tensors)} tensors")
    for i, (t, m) in enumerate(zip(tensors, masks, strict=True)):
        if not isinstance(m, Tensor) or m.shape != t.shape:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise UserError(f"{what}[{i}] has shape {shape}, expected {tuple(t.shape)}")
        if m.device != t.device:
            raise UserError(f"{what}[{i}] is on {m.device}, expected {t.device}")
        if what == "masks" and m.dtype != torch.bool:
            raise UserError(f"masks[{i}] has dtype {m.dtype}, expected torch.bool")
    return masks


def _numel(tensors: list[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def _ops_for(tensors: Sequence[Tensor]):
    """The compiled ops able to run on these tensors' devices and layouts, else the PyTorch
    ones (same interface, same results)."""
    devices = {t.device.type for t in tensors}
    if len(devices) != 1 or not all(t.is_contiguous() for t in tensors):
        return _torch_ops
    return _loader.extension(devices.pop()) or _torch_ops


def _check_k(k: int, lowest: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not lowest <= k <= n:
        raise UserError(f"k={k!r} is out of range; expected an integer in [{lowest}, {n}]")


def kth_smallest_abs(tensors: Sequence[Tensor], k: int) -> float:
    """Exact k-th smallest |w| (1-based) over all elements of `tensors`, without concatenating.

    Raises UserError when k is outside [1, total elements] or a tensor holds NaN.
    """
    ts = _check(tensors)
    _check_k(k, 1, _numel(ts))
    return _ops_for(ts).kth_smallest_abs(ts, k)


def masks_from_threshold(tensors: Sequence[Tensor], threshold: float, k: int) -> list[Tensor]:
    """Keep-masks (True = keep) that prune exactly k weights.

    Everything with |w| < threshold is pruned, then |w| == threshold ties in tensor-list order
    and flattened-index order until k are pruned. The threshold is compared in float32.
    """
    ts = _check(tensors)
    _check_k(k, 0, _numel(ts))
    threshold = float(threshold)
    if not threshold >= 0.0:
        raise UserError(f"threshold={threshold!r} must be a non-negative number")
    tkey = _torch_ops.threshold_key(threshold)
    ops = _ops_for(ts)
    below, ties = ops.count_below_and_ties(ts, tkey)
    if not below <= k <= below + sum(ties):
        raise UserError(
            f"threshold {threshold!r} cannot prune exactly k={k}: {below} weights lie below it "
            f"and {sum(ties)} equal it"
        )
    with torch.no_grad():
        return ops.masks_from_threshold(ts, tkey, k - below, ties)


def global_magnitude_masks(tensors: Sequence[Tensor], k: int) -> list[Tensor]:
    """Keep-masks pruning exactly the k smallest-magnitude weights (deterministic ties)."""
    ts = _check(tensors)
    if k == 0:
        return masks_from_threshold(ts, 0.0, 0)
    return masks_from_threshold(ts, kth_smallest_abs(ts, k), k)


def iter_global_magnitude_masks(tensors: Sequence[Tensor], k: int) -> Iterator[Tensor]:
    """The masks of `global_magnitude_masks`, made one tensor at a time on demand.

    A caller that uses each mask and drops it (in-place pruning) never holds more than one
    layer's mask: extra memory stays at the largest layer's bool mask whatever the model size.
    """
    ts = _check(tensors)
    _check_k(k, 0, _numel(ts))
    tkey = _torch_ops.threshold_key(kth_smallest_abs(ts, k) if k else 0.0)
    ops = _ops_for(ts)
    below, ties = ops.count_below_and_ties(ts, tkey)
    quota = k - below
    for t, n_ties in zip(ts, ties, strict=True):
        take = min(quota, n_ties)
        quota -= take
        with torch.no_grad():
            yield ops.masks_from_threshold([t], tkey, take, [n_ties])[0]


def apply_masks_(tensors: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """In place w *= m for every pair (pruned weights become zero)."""
    ts = list(tensors)
    _check(ts)
    ms = _check_masks(ts, masks)
    with torch.no_grad():
        _ops_for(ts + ms).apply_masks_(ts, ms)


def rewind_(tensors: Sequence[Tensor], initial: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """In place w <- w0 * m: lottery-ticket rewinding of the kept weights, zero elsewhere."""
    ts = list(tensors)
    _check(ts)
    w0 = _check_masks(ts, _check(initial, "initial"), "initial")
    ms = _check_masks(ts, masks)
    same_dtypes = all(a.dtype == b.dtype for a, b in zip(ts, w0, strict=True))
    ops = _ops_for(ts + w0 + ms) if same_dtypes else _torch_ops  # the kernel needs one dtype
    with torch.no_grad():
        ops.rewind_(ts, w0, ms)


def lamp_scores(tensor: Tensor) -> Tensor:
    """LAMP score W[u]^2 / sum_{v>=u} W[v]^2 over the layer's weights sorted ascending by |w|.

    Ties are ordered by flattened index (stable sort). Returned as float32 in the input layout.
    """
    (t,) = _check([tensor], "tensor")
    if torch.isnan(t).any():
        raise _torch_ops.nan_error(0)
    return _ops_for([t]).lamp_scores(t)


def mos_mix(features: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, experts: Tensor,
            biases: Tensor | None, out: int, inp: int, neuron: bool) -> tuple[Tensor, Tensor | None]:
    """A mixture-of-supernets layer's weight and bias for one arch, differentiable in every input
    but `features`.

    The router MLP (w1, b1 -> ReLU -> w2, b2) maps the arch `features` to softmax coefficients
    over the m experts (per output row when `neuron`), which mix the active (out, inp) block of
    `experts` (m, O, I[, 1, 1]) and `biases` (m, O). Compiled, this is a single autograd node.
    """
    tensors = [features, w1, b1, w2, b2, experts, *([] if biases is None else [biases])]
    return _ops_for(tensors).mos_mix(features, w1, b1, w2, b2, experts, biases, out, inp, neuron)
