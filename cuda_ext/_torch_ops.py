"""Pure-PyTorch implementations of every cuda_ext op: the fallback and the reference path.

Selection works on the bit patterns of |w| as float32: for non-negative IEEE floats the
integer order of the bits equals the numeric order, so an exact k-th smallest value is two
histogram passes (high 15 bits, then low 16 bits) over per-chunk int views. Half types are
widened to float32 chunk by chunk, which is exact. Extra memory is a couple of histograms and
one chunk of keys, never a concatenation of all weights.

`mos_mix` is the reference of the mixture-of-supernets layer op: router MLP, softmax over the
experts, and the mixture of the active block of the stacked experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nasbench_core.errors import UserError

CHUNK = 1 << 22  # elements per chunk: keeps temporaries at ~16 MiB whatever the tensor size
ABS_MASK = 0x7FFFFFFF
INF_KEY = 0x7F800000  # keys above this are NaN
HI_BINS = 1 << 15
LO_BINS = 1 << 16


def _keys(flat: Tensor) -> Tensor:
    """Monotone int32 keys of |x| for a 1-d chunk (NaN keys are > INF_KEY)."""
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.view(torch.int32) & ABS_MASK


def _chunks(t: Tensor):
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield start, flat[start : start + CHUNK]


def nan_error(index: int) -> UserError:
    return UserError(f"tensor {index} contains NaN; magnitudes of NaN weights are undefined")


def _select_bin(hist: Tensor, k: int) -> tuple[int, int]:
    """Bin holding the k-th element (1-based) and the rank of that element inside the bin."""
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor([k], dtype=cum.dtype)).item())
    before = int(cum[b - 1].item()) if b > 0 else 0
    return b, k - before


def kth_smallest_abs(tensors: Sequence[Tensor], k: int) -> float:
    hist = torch.zeros(HI_BINS, dtype=torch.int64)
    for i, t in enumerate(tensors):
        th = torch.zeros(HI_BINS, dtype=torch.int64, device=t.device)
        for _, c in _chunks(t):
            th += torch.bincount(_keys(c) >> 16, minlength=HI_BINS)
        th = th.cpu()
        inf_bin = INF_KEY >> 16
        if th[inf_bin + 1 :].any() or (
            th[inf_bin] > 0 and any((_keys(c) > INF_KEY).any() for _, c in _chunks(t))
        ):
            raise nan_error(i)
        hist += th
    hi, k = _select_bin(hist, k)
    hist = torch.zeros(LO_BINS, dtype=torch.int64)
    for t in tensors:
        for _, c in _chunks(t):
            key = _keys(c)
            sel = key[(key >> 16) == hi]
            if sel.numel():
                hist += torch.bincount(sel & 0xFFFF, minlength=LO_BINS).cpu()
    lo, _ = _select_bin(hist, k)
    bits = torch.tensor([(hi << 16) | lo], dtype=torch.int32)
    return float(bits.view(torch.float32).item())


def threshold_key(threshold: float) -> int:
    """Key of a threshold rounded to float32, the precision selection works in."""
    t = torch.tensor([abs(threshold)], dtype=torch.float32)
    return int((t.view(torch.int32) & ABS_MASK).item())


def count_below_and_ties(tensors: Sequence[Tensor], tkey: int) -> tuple[int, list[int]]:
    """Number of |w| < threshold overall and the number of ties in each tensor."""
    below = 0
    ties = []
    for i, t in enumerate(tensors):
        tt = 0
        for _, c in _chunks(t):
            key = _keys(c)
            if (key > INF_KEY).any():
                raise nan_error(i)
            below += int((key < tkey).sum().item())
            tt += int((key == tkey).sum().item())
        ties.append(tt)
    return below, ties


def masks_from_threshold(
    tensors: Sequence[Tensor], tkey: int, ties_to_prune: int, ties: Sequence[int]
) -> list[Tensor]:
    """Keep-masks: prune |w| < threshold and the first `ties_to_prune` ties in list/flat order.

    `ties[i]` is the number of |w| == threshold in tensor i (from `count_below_and_ties`).
    """
    masks = []
    for t, n_ties in zip(tensors, ties, strict=True):
        prune_here = min(ties_to_prune, n_ties)
        ties_to_prune -= prune_here
        mask = torch.empty(t.numel(), dtype=torch.bool, device=t.device)
        for start, c in _chunks(t):
            key = _keys(c)
            if prune_here == 0:
                keep = key >= tkey
            else:
                tie = key == tkey
                keep = (key > tkey) | (tie & (torch.cumsum(tie, 0) > prune_here))
                prune_here = max(0, prune_here - int(tie.sum().item()))
            mask[start : start + c.numel()] = keep
        masks.append(mask.view(t.shape))
    return masks


def apply_masks_(tensors: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    for w, m in zip(tensors, masks, strict=True):
        w.mul_(m)


def rewind_(tensors: Sequence[Tensor], initial: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    for w, w0, m in zip(tensors, initial, masks, strict=True):
        if w0.dtype == w.dtype and w0.device == w.device:
            torch.mul(w0, m, out=w)
        else:
            w.copy_(w0.to(w.device) * m)


def lamp_scores(tensor: Tensor) -> Tensor:
    sq = tensor.detach().reshape(-1).double().square()
    sorted_sq, order = torch.sort(sq, stable=True)
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores_sorted = torch.where(suffix > 0, sorted_sq / suffix, torch.zeros_like(suffix))
    scores = torch.empty_like(scores_sorted)
    scores[order] = scores_sorted
    return scores.float().view(tensor.shape)


def mos_coefficients(features: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                     experts: int, rows: int) -> Tensor:
    """Router MLP then softmax over the experts: α as (m, rows), where rows is 1 for layer
    routing and the active output count for neuron routing (logit r*m + k is row r, expert k)."""
    hidden = torch.addmv(b1, w1, features).relu()
    logits = torch.addmv(b2, w2, hidden)[: rows * experts]
    return logits.view(rows, experts).softmax(-1).t()


def mos_mix(features: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, experts: Tensor,
            biases: Tensor | None, out: int, inp: int, neuron: bool) -> tuple[Tensor, Tensor | None]:
    """The mixed (out, inp, ...) weight and (out,) bias of stacked experts (m, O, I, ...)."""
    coef = mos_coefficients(features, w1, b1, w2, b2, experts.shape[0], out if neuron else 1)
    block = experts if experts.shape[1:3] == (out, inp) else experts[:, :out, :inp]
    weight = (block * coef[(..., *([None] * (experts.dim() - 2)))]).sum(0)
    bias = None if biases is None else (biases[:, :out] * coef).sum(0)
    return weight, bias
