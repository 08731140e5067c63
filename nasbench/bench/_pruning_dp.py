"""`nasbench bench pruning --set parts=layer_dp`: fast layer-DP against the reference computation.

Torchvision ResNet-18 (random weights, seeded), `dp_samples` N(0,1) calibration images at
32x32, K=101 amounts, sparsity `sparsity`, B=4096. In one run:

- `fast`: `layer_dp`'s default (`curves="adaptive"`: cached suffix forwards, coarse-to-fine
  amounts), timed end to end (curves + DP).
- `exact`: every layer x every amount measured (`curves="cached"`: the same forward values as
  the reference, computed from cached activations), timed; its DP is the oracle the fast
  allocation is compared with.
- `reference`: every layer x every amount x a full forward, as the paper's code does. On this
  machine it takes about an hour at 1,024 images, so it is timed on a measured subset of
  layer x amount forwards and extrapolated (the JSON says from how many); its values on that
  subset are checked against the `exact` curves.

Goals: fast >= 20x faster than the reference, its allocation within 0.5% of the oracle's DP
objective (evaluated on the exact curves) and within +-1 budget unit per layer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pruners.dp_curves import CurveSampler, suffix_report
from pruners.layer_dp import dp_step
from pruners.options import LayerDPOptions
from pruners.selection import select_targets

REFERENCE_LAYERS = (0, 10, 20)  # stem conv, a middle conv, fc: short to long suffixes
REFERENCE_AMOUNTS = (10, 50, 90)


def layer_dp_vs_reference(*, samples: int, sparsity: float, seed: int,
                          reference_full: bool = False) -> dict[str, Any]:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    targets = select_targets(model)
    n = sum(t.numel for t in targets)
    k = round(sparsity * n)
    out: dict[str, Any] = {"model": "torchvision resnet18 (random init)", "input": [3, 32, 32],
                           "calibration_images": samples, "K": 101, "layers": len(targets),
                           "sparsity": sparsity, "budget_units": 4096,
                           "torch_threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    fast = dp_step(model, targets, x, k, LayerDPOptions())
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = dp_step(model, targets, x, k, LayerDPOptions(curves="cached"))
    t_exact = time.perf_counter() - t0

    ref_seconds, ref_note, agree = _reference_time(model, targets, x, exact.curves, reference_full)
    truth = exact.curves
    ours = float(sum(truth[li, ki] for li, ki in enumerate(fast.solution.grid_index)))
    best = exact.solution.objective
    unit = exact.solution.unit
    diff_units = [abs(a - b) / unit for a, b in zip(fast.solution.counts, exact.solution.counts,
                                                      strict=True)]
    out.update({
        "fast": {"seconds": round(t_fast, 2), **suffix_report(fast.sampler),
                 "refinement_sweeps": fast.rounds, "objective_on_own_curves": fast.solution.objective,
                 "notes": fast.notes},
        "exact": {"seconds": round(t_exact, 2), **suffix_report(exact.sampler),
                  "objective": best},
        "reference": {"seconds": round(ref_seconds, 1), "how": ref_note,
                      "max_rel_diff_vs_exact_on_measured": agree},
        "speedup_vs_reference": round(ref_seconds / t_fast, 1),
        "speedup_exact_vs_reference": round(ref_seconds / t_exact, 1),
        "objective_gap_pct": round(100 * (ours - best) / best, 3) if best > 0 else 0.0,
        "allocation_max_diff_units": round(max(diff_units), 2),
        "layers_off_by_more_than_1_unit": int(sum(d > 1 for d in diff_units)),
        "counts_fast": fast.solution.counts, "counts_exact": exact.solution.counts,
    })
    out["goals"] = {
        "speedup>=20x": out["speedup_vs_reference"] >= 20,
        "objective_within_0.5pct": out["objective_gap_pct"] <= 0.5,
        "allocation_within_1_unit": out["layers_off_by_more_than_1_unit"] == 0,
    }
    return out


def _reference_time(model, targets, x, exact: np.ndarray, full: bool) -> tuple[float, str, float]:
    """Seconds for every layer x amount x full forward: measured, or from a measured subset."""
    amounts = np.linspace(0.0, 1.0, 101)
    ref = CurveSampler(model, targets, x, amounts, method="reference")
    L, K = len(targets), len(amounts)
    if full:
        t0 = time.perf_counter()
        ref.sweep(lambda li: range(K), label="reference curves")
        return time.perf_counter() - t0, f"measured: all {L * K} layer x amount forwards", \
            _max_rel(ref, exact)
    picked = [(li, ki) for li in REFERENCE_LAYERS for ki in REFERENCE_AMOUNTS]
    t0 = time.perf_counter()
    for li, ki in picked:
        ref.measure(li, [ki], [])
    per = (time.perf_counter() - t0) / len(picked)
    return per * L * K, (f"extrapolated from {len(picked)} of {L * K} layer x amount forwards "
                         f"(layers {list(REFERENCE_LAYERS)}, grid indices "
                         f"{list(REFERENCE_AMOUNTS)}; {per:.2f} s each)"), _max_rel(ref, exact)


def _max_rel(ref: CurveSampler, exact: np.ndarray) -> float:
    got, want = ref.values[ref.known], exact[ref.known]
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
