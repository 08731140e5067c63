"""Distortion curves for layer-DP: output MSE when one layer alone is pruned by magnitude.

D[l, k] is the mean (or worst) per-sample MSE of the model's output when layer l is pruned to
`amounts[k]` and every other layer keeps its current mask, against the model's output now, on
calibration inputs (Xu et al. 2023). Every value is measured by a forward pass; what changes
between the methods is how much of the network runs and at which amounts:

- `reference`: every layer x every amount x a full forward, as the paper's code does.
- `cached`: every amount, but only the part of the network from layer l onward runs, from the
  activations cached at that cut (`pruners.cached_forward`), several amounts per forward.
- adaptive (`CurveSampler` driven by `pruners.layer_dp.dp_step`): `cached`, on a coarse set
  of amounts first; each `sweep` then measures more amounts only where asked (next to the DP's
  picks, where the DP could still find better, optionally where a curve bends), and the rest
  of each curve is interpolated (monotone cubic, PCHIP) between measured points.

Weights are zeroed in the order `magnitude_order` gives (already-pruned first, then |w|,
ties by flat index) and restored afterwards, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator
from torch import nn

from pruners.cached_forward import Stages, trace_stages
from pruners.errors import PruneError
from pruners.selection import Target

CurveMethod = Literal["cached", "reference"]
Progress = Callable[[int, int, str], None]
"""`on_progress(done, total, label)`: layer `done` of `total` finished in the pass `label`."""


def magnitude_order(target: Target) -> torch.Tensor:
    """Flat indices in pruning order: already-pruned weights, then by |w| (stable)."""
    key = target.tensor.detach().abs()
    if (mask := target.mask) is not None:
        key = key.masked_fill(~mask, -1.0)
    return torch.argsort(key.reshape(-1), stable=True)


def magnitude_mask(target: Target, count: int) -> torch.Tensor:
    """Keep-mask pruning `count` weights of one layer in `magnitude_order` (any dtype/layout)."""
    keep = torch.ones(target.numel, dtype=torch.bool, device=target.param.device)
    keep[magnitude_order(target)[:count]] = False
    return keep.view(target.param.shape)


class _Zeroed:
    """Zeroes a layer's `count` first weights in `order`; restores on `restore()`.

    Counts usually come in ascending order (a curve's amounts), so each `set` zeroes only the
    weights between the previous count and this one in a working copy, instead of re-copying
    and re-zeroing the whole layer per amount."""

    def __init__(self, target: Target, order: torch.Tensor) -> None:
        self.param = target.param
        self.backup = self.param.detach().clone()  # keeps the memory format (channels_last)
        self.work = self.backup.contiguous().view(-1).clone()
        self.order, self.at = order, 0

    @torch.no_grad()
    def set(self, count: int) -> None:
        if count < self.at:
            self.work.copy_(self.backup.contiguous().view(-1))
            self.at = 0
        self.work[self.order[self.at : count]] = 0
        self.at = count
        self.param.copy_(self.work.view(self.param.shape))  # copy_ follows the param's strides

    @torch.no_grad()
    def restore(self) -> None:
        self.param.copy_(self.backup)


class CurveSampler:
    """Measured distortion values `values[l, k]` where `known[l, k]`, filled in by sweeps.

    A sweep visits the layers in graph order, advancing one cached activation through the
    network, and measures the amounts `requests(l)` names. The live values at each cut are
    kept (while they fit in `cache_bytes`), so only the first sweep pays the dense forward;
    like the magnitude orders (sorted once per layer), they assume the model is not changed
    while the sampler is in use (measurements restore every weight).
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], inputs: torch.Tensor,
                 amounts: np.ndarray, *, worst_case: bool = False, batch_size: int = 256,
                 amount_batch: int = 4, method: CurveMethod = "cached",
                 on_progress: Progress | None = None, cache_bytes: int = 1 << 30) -> None:
        if method not in ("cached", "reference"):
            raise PruneError(f"curves={method!r} is unknown; expected cached or reference")
        self.model, self.targets, self.inputs = model, list(targets), inputs
        self.amounts = np.asarray(amounts, dtype=np.float64)
        self.worst_case, self.batch_size = worst_case, batch_size
        self.amount_batch = max(1, amount_batch)
        self.method, self.on_progress, self.cache_bytes = method, on_progress, cache_bytes
        L, K = len(self.targets), len(self.amounts)
        self.values = np.zeros((L, K))
        self.known = np.zeros((L, K), dtype=bool)
        self.forwards = 0.0  # layer x amount measurements, in full-forward equivalents
        self.dense = 0.0  # forward equivalents spent advancing the sweeps' cached activations
        self.measured = 0  # layer x amount measurements
        self.sizes = [t.numel for t in self.targets]
        self.counts = np.rint(np.outer(self.sizes, self.amounts)).astype(np.int64)
        self.floors = [0 if (m := t.mask) is None else m.numel() - int(m.count_nonzero())
                       for t in self.targets]
        if method != "reference":  # amounts at or below the current mask change nothing
            self.known |= self.counts <= np.asarray(self.floors)[:, None]
        was = model.training
        model.eval()
        try:
            self.ref = self._full(inputs)
            self.stages: Stages | None = None
            if method != "reference":
                self.stages = trace_stages(model, self.targets, inputs[: max(2, min(8, len(inputs)))])
            with torch.no_grad():
                self.share = self._suffix_shares() if self.stages is not None else [1.0] * L
        finally:
            model.train(was)
        self.sweeps = 0
        self._orders: dict[int, torch.Tensor] = {}  # magnitude order per layer, sorted once
        self._states: dict[int, list[torch.Tensor]] = {}  # live values at cuts, kept across sweeps
        self._state_bytes = 0

    # -- measuring ---------------------------------------------------------------------------
    @torch.no_grad()
    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + self.batch_size])
                          for i in range(0, len(x), self.batch_size)])

    def _distortion(self, out: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-amount (sum, max) of per-sample MSE; `out` is A stacked outputs [A*n, ...] of
        the samples `ref` [n, ...] holds."""
        err = (out.reshape(len(out) // len(ref), len(ref), -1).double()
               - ref.reshape(1, len(ref), -1).double()).square().mean(2)
        return err.sum(1), err.max(1).values

    def sweep(self, requests: Callable[[int], Sequence[int]],
              refine: Callable[[int], Sequence[int]] | None = None, label: str = "curves") -> None:
        """Measure, per layer, the grid indices `requests(l)` names, then `refine(l)` until it
        names none; both see the values measured so far."""
        was = self.model.training
        self.model.eval()
        self.sweeps += 1
        try:
            with torch.no_grad():
                self._sweep(requests, refine, label)
        finally:
            self.model.train(was)

    def _sweep(self, requests, refine, label) -> None:
        L = len(self.targets)
        order = sorted(range(L), key=lambda li: self.stages.starts[li]) if self.stages else range(L)
        at, state = (self.stages.first, [self.inputs]) if self.stages else (0, [])
        for done, li in enumerate(order, start=1):
            if self.stages is not None:
                start = self.stages.starts[li]
                if start in self._states:
                    state, at = self._states[start], start
                elif start > at:
                    state = self._advance(state, at, start)
                    at = start
                    self._keep(start, state)
            self.measure(li, requests(li), state)
            while refine is not None and (more := [k for k in refine(li) if not self.known[li, k]]):
                self.measure(li, more, state)
            if self.on_progress is not None:
                self.on_progress(done, L, f"{label}: layer {done}/{L} {self.targets[li].name}")

    def _advance(self, state: list[torch.Tensor], i: int, j: int) -> list[torch.Tensor]:
        at_share = {self.stages.starts[li]: s for li, s in enumerate(self.share)}
        self.dense += at_share.get(i, 1.0) - at_share[j]
        seg = self.stages.segment(i, j)
        parts = [seg(*[v[s : s + self.batch_size] for v in state])
                 for s in range(0, len(self.inputs), self.batch_size)]
        return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _keep(self, start: int, state: list[torch.Tensor]) -> None:
        """Keep the live values at a cut for later sweeps while they fit in `cache_bytes`
        (a sweep then skips the dense forward up to the cut)."""
        size = sum(v.element_size() * v.numel() for v in state)
        if self._state_bytes + size <= self.cache_bytes:
            self._states[start] = state
            self._state_bytes += size

    def order(self, li: int) -> torch.Tensor:
        """Layer li's `magnitude_order`, computed once (the weights are restored after every
        measurement, so it never changes while the sampler lives)."""
        if li not in self._orders:
            self._orders[li] = magnitude_order(self.targets[li])
        return self._orders[li]

    def measure(self, li: int, idxs: Sequence[int], state: list[torch.Tensor]) -> None:
        """Measure grid indices `idxs` of layer li (state: live values at its cut)."""
        todo = sorted({int(k) for k in idxs if self.method == "reference" or not self.known[li, k]})
        if not todo:
            return
        zeroed = _Zeroed(self.targets[li], self.order(li))
        try:
            if self.stages is None:
                vals = self._measure_whole(zeroed, [int(self.counts[li, k]) for k in todo])
            else:
                vals = self._measure_cached(li, zeroed, [int(self.counts[li, k]) for k in todo], state)
        finally:
            zeroed.restore()
        self.values[li, todo] = vals
        self.known[li, todo] = True
        self.measured += len(todo)
        self.forwards += len(todo) * self.share[li]

    def _measure_whole(self, zeroed: _Zeroed, counts: list[int]) -> np.ndarray:
        out = np.zeros(len(counts))
        for a, c in enumerate(counts):
            zeroed.set(c)
            s, m = self._distortion(self._full(self.inputs), self.ref)
            out[a] = float(m[0] if self.worst_case else s[0] / len(self.inputs))
        return out

    def _measure_cached(self, li: int, zeroed: _Zeroed, counts: list[int],
                        state: list[torch.Tensor]) -> np.ndarray:
        start = self.stages.starts[li]
        layer, rest = self.stages.segment(start, start + 1), self.stages.segment(start + 1, None)
        n = len(self.inputs)
        sums, maxs = np.zeros(len(counts)), np.zeros(len(counts))
        for g in range(0, len(counts), self.amount_batch):
            group = counts[g : g + self.amount_batch]
            outs = []  # layer li's outputs at each amount of the group, all samples
            for c in group:
                zeroed.set(c)
                parts = [layer(*[v[s : s + self.batch_size] for v in state])
                         for s in range(0, n, self.batch_size)]
                outs.append([torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))])
            rows = max(1, self.batch_size // len(group))
            for s in range(0, n, rows):  # the rest of the network once on the stacked amounts
                stacked = [torch.cat([o[k][s : s + rows] for o in outs]) for k in range(len(outs[0]))]
                sm, mx = self._distortion(rest(*stacked), self.ref[s : s + rows])
                sums[g : g + len(group)] += sm.numpy()
                maxs[g : g + len(group)] = np.maximum(maxs[g : g + len(group)], mx.numpy())
        return maxs if self.worst_case else sums / n

    def _suffix_shares(self) -> list[float]:
        """Each layer's share of a full forward's FLOPs from its cut onward (for the report)."""
        from torch.utils.flop_counter import FlopCounterMode

        x = self.inputs[:1]
        with FlopCounterMode(display=False) as counter:
            self.model(x)
        total = max(1, counter.get_total_flops())
        shares = []
        for li in range(len(self.targets)):
            start = self.stages.starts[li]
            first = self.stages.first
            state = list(self.stages.segment(first, start)(x)) if start > first else [x]
            with FlopCounterMode(display=False) as c:
                self.stages.segment(start, None)(*state)
            shares.append(c.get_total_flops() / total)
        return shares

    # -- reading -----------------------------------------------------------------------------
    def curves(self) -> np.ndarray:
        """Measured values, and PCHIP interpolation between them where not measured."""
        out = self.values.copy()
        for li in range(len(self.targets)):
            row = self.known[li]
            if row.all() or row.sum() < 2:
                continue
            xs = self.amounts[row]
            out[li, ~row] = PchipInterpolator(xs, self.values[li, row])(self.amounts[~row])
        return out

    def bends(self, li: int, tol: float, below: float = np.inf) -> list[int]:
        """Midpoints of unmeasured spans where the curve bends: PCHIP and the straight line
        between the span's ends differ there by more than `tol`. Spans whose both ends exceed
        `below` are skipped: a DP whose objective is `below` cannot pick a point there."""
        idx = np.flatnonzero(self.known[li])
        if len(idx) < 3:
            return []
        pchip = PchipInterpolator(self.amounts[idx], self.values[li, idx])
        out = []
        for i, j in zip(idx[:-1], idx[1:], strict=True):
            if j - i < 2 or min(self.values[li, i], self.values[li, j]) > below:
                continue
            m = (i + j) // 2
            w = (self.amounts[m] - self.amounts[i]) / (self.amounts[j] - self.amounts[i])
            line = (1 - w) * self.values[li, i] + w * self.values[li, j]
            if abs(float(pchip(self.amounts[m])) - line) > tol:
                out.append(int(m))
        return out

    def coarse(self, points: int) -> list[int]:
        """`points` grid indices spread evenly over [0, 1], both ends included."""
        K = len(self.amounts)
        return sorted({round(i * (K - 1) / max(1, points - 1)) for i in range(points)})


def distortion_curves(
    model: nn.Module,
    targets: Sequence[Target],
    inputs: torch.Tensor,
    amounts: np.ndarray,
    *,
    worst_case: bool = False,
    batch_size: int = 256,
    method: CurveMethod = "cached",
    amount_batch: int = 4,
    on_progress: Progress | None = None,
) -> np.ndarray:
    """D[l, k] measured at every amount (no interpolation): `cached` runs only what follows
    each layer, `reference` the whole model. Amounts below a layer's current sparsity keep its
    current mask (masks only grow), so D is 0 there."""
    sampler = CurveSampler(model, targets, inputs, amounts, worst_case=worst_case,
                           batch_size=batch_size, amount_batch=amount_batch, method=method,
                           on_progress=on_progress)
    everything = list(range(len(amounts)))
    sampler.sweep(lambda li: everything, label=f"{method} curves")
    return sampler.curves()


def suffix_report(sampler: CurveSampler) -> dict[str, float | int | str]:
    """How much measuring cost, against every layer x every amount x a full forward."""
    L, K = sampler.values.shape
    dense = sampler.dense if sampler.stages is not None else 0.0
    cost = sampler.forwards + dense
    return {
        "cut": "torch.fx" if sampler.stages is not None else "whole model",
        "measured": sampler.measured, "grid": L * K,
        "full_forward_equivalents": round(cost, 2),
        "dense_forward_equivalents": round(dense, 2),
        "flop_ratio_vs_reference": round(L * K / max(cost, 1e-9), 2),
        "sweeps": sampler.sweeps,
    }


__all__ = ["CurveMethod", "CurveSampler", "Progress", "distortion_curves", "magnitude_mask",
           "magnitude_order", "suffix_report"]
