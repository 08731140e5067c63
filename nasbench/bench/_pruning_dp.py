"""`nasbench bench pruning --set parts=layer_dp`: fast layer-DP against the reference computation.

Torchvision ResNet-18 (random weights, seeded), `dp_samples` N(0,1) calibration images at
32x32 — or, with `dp_model=mnist5k`, one trained 2 epochs on mnist5k and calibrated on its
training images (28 px, 1-channel stem) — K=101 amounts, sparsity `sparsity`, B=4096. In one run:

- `fast`: `layer_dp`'s default (`curves="adaptive"`: cached suffix forwards, coarse-to-fine
  amounts), timed end to end (curves + DP).
- `exact`: every layer x every amount measured (`curves="cached"`: the same forward values as
  the reference, computed from cached activations), timed; its DP is the oracle the fast
  allocation is compared with.
- `reference`: every layer x every amount x a full forward, as the paper's code does. On this
  machine it takes about an hour at 1,024 images, so it is timed on a measured subset of
  layer x amount forwards and extrapolated (the JSON says from how many); its values on that
  subset are checked against the `exact` curves.

- `schedules`: other ways to choose the amounts, replayed on the `exact` curves (no forward:
  a "measurement" reads the table), each with its cost in full-forward equivalents and its
  objective gap / allocation difference against the oracle: the default with other coarse
  grids, and "near the picks only" (coarse grid, PCHIP in between, measure each DP pick and
  its neighbours until the picks are all measured), which skips the reduced-cost test.

Times are wall and CPU seconds (CPU time is what to trust on a shared machine: one torch
thread). `fast` also says where its time goes: amounts measured per layer, each layer's suffix
share of a forward, and their product in forward equivalents.

Goals: fast >= 20x faster than the reference, its allocation within 0.5% of the oracle's DP
objective (evaluated on the exact curves) and within +-1 budget unit per layer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pruners.dp_curves import CurveSampler, suffix_report
from pruners.layer_dp import DPSolution, dp_step, solve_dp
from pruners.options import LayerDPOptions
from pruners.selection import select_targets

REFERENCE_LAYERS = (0, 10, 20)  # stem conv, a middle conv, fc: short to long suffixes
REFERENCE_AMOUNTS = (10, 50, 90)
TOWARD_HIGH = (0, 20, 40, 55, 67, 77, 85, 90, 94, 97, 99, 100)  # a coarse grid dense where curves bend


def _random_resnet18(samples: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    import torchvision

    torch.manual_seed(seed)
    x = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return torchvision.models.resnet18(num_classes=10).eval(), x, "torchvision resnet18 (random init)"


def _trained_resnet18(samples: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """ResNet-18 (1-channel stem) trained 2 epochs on mnist5k at 28 px, calibrated on its own
    training images: are a trained model's curves smooth enough for fewer amounts?"""
    from nasbench.bench._pruning_structured import _accuracy, _fit, resnet18
    from nasbench.data import load_dataset

    data = load_dataset(name="mnist5k", batch_size=128, seed=seed)
    xt, yt = (torch.cat(t) for t in zip(*data.train_loader, strict=True))
    xv, yv = (torch.cat(t) for t in zip(*data.val_loader, strict=True))
    torch.manual_seed(seed)
    model = resnet18(in_chans=1, num_classes=10)
    _fit(model, xt, yt, 2, seed)
    return model.eval(), xt[:samples], f"resnet18 trained on mnist5k (val acc {_accuracy(model, xv, yv)})"


MODELS = {"random": _random_resnet18, "mnist5k": _trained_resnet18}


def layer_dp_vs_reference(*, samples: int, sparsity: float, seed: int,
                          reference_full: bool = False, model_kind: str = "random") -> dict[str, Any]:
    model, x, label = MODELS[model_kind](samples, seed)
    targets = select_targets(model)
    n = sum(t.numel for t in targets)
    k = round(sparsity * n)
    out: dict[str, Any] = {"model": label, "input": list(x.shape[1:]),
                           "calibration_images": samples, "K": 101, "layers": len(targets),
                           "sparsity": sparsity, "budget_units": 4096,
                           "torch_threads": torch.get_num_threads()}

    t0, c0 = time.perf_counter(), time.process_time()
    fast = dp_step(model, targets, x, k, LayerDPOptions())
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    exact = dp_step(model, targets, x, k, LayerDPOptions(curves="cached"))
    t_exact, c_exact = time.perf_counter() - t0, time.process_time() - c0

    ref_seconds, ref_cpu, ref_note, agree = _reference_time(model, targets, x, exact.curves,
                                                            reference_full)
    truth = exact.curves
    ours = float(sum(truth[li, ki] for li, ki in enumerate(fast.solution.grid_index)))
    best = exact.solution.objective
    unit = exact.solution.unit
    diff_units = [abs(a - b) / unit for a, b in zip(fast.solution.counts, exact.solution.counts,
                                                      strict=True)]
    out.update({
        "fast": {"seconds": round(t_fast, 2), "cpu_seconds": round(c_fast, 2),
                 **suffix_report(fast.sampler), "refinement_sweeps": fast.rounds,
                 "objective_on_own_curves": fast.solution.objective, "notes": fast.notes,
                 **_where_time_goes(fast.sampler)},
        "exact": {"seconds": round(t_exact, 2), "cpu_seconds": round(c_exact, 2),
                  **suffix_report(exact.sampler), "objective": best},
        "reference": {"seconds": round(ref_seconds, 1), "cpu_seconds": round(ref_cpu, 1),
                      "how": ref_note, "max_rel_diff_vs_exact_on_measured": agree},
        "speedup_vs_reference": round(ref_seconds / t_fast, 1),
        "speedup_vs_reference_cpu": round(ref_cpu / c_fast, 1),
        "speedup_exact_vs_reference": round(ref_seconds / t_exact, 1),
        "objective_gap_pct": round(100 * (ours - best) / best, 3) if best > 0 else 0.0,
        "allocation_max_diff_units": round(max(diff_units), 2),
        "layers_off_by_more_than_1_unit": int(sum(d > 1 for d in diff_units)),
        "counts_fast": fast.solution.counts, "counts_exact": exact.solution.counts,
        "schedules": schedules(truth, exact.sampler, k, exact.solution),
    })
    out["goals"] = {
        "speedup>=20x": out["speedup_vs_reference"] >= 20,
        "objective_within_0.5pct": out["objective_gap_pct"] <= 0.5,
        "allocation_within_1_unit": out["layers_off_by_more_than_1_unit"] == 0,
    }
    return out


def _reference_time(model, targets, x, exact: np.ndarray,
                    full: bool) -> tuple[float, float, str, float]:
    """Wall and CPU seconds for every layer x amount x full forward: measured, or from a
    measured subset."""
    amounts = np.linspace(0.0, 1.0, 101)
    ref = CurveSampler(model, targets, x, amounts, method="reference")
    L, K = len(targets), len(amounts)
    if full:
        t0, c0 = time.perf_counter(), time.process_time()
        ref.sweep(lambda li: range(K), label="reference curves")
        return (time.perf_counter() - t0, time.process_time() - c0,
                f"measured: all {L * K} layer x amount forwards", _max_rel(ref, exact))
    picked = [(li, ki) for li in REFERENCE_LAYERS for ki in REFERENCE_AMOUNTS]
    t0, c0 = time.perf_counter(), time.process_time()
    for li, ki in picked:
        ref.measure(li, [ki], [])
    per = (time.perf_counter() - t0) / len(picked)
    per_cpu = (time.process_time() - c0) / len(picked)
    return per * L * K, per_cpu * L * K, (
        f"extrapolated from {len(picked)} of {L * K} layer x amount forwards (layers "
        f"{list(REFERENCE_LAYERS)}, grid indices {list(REFERENCE_AMOUNTS)}; {per:.2f} s, "
        f"{per_cpu:.2f} CPU s each)"), _max_rel(ref, exact)


def _where_time_goes(sampler: CurveSampler) -> dict[str, Any]:
    """Amounts measured per layer and what they cost in full-forward equivalents (each
    layer's suffix share of a forward's FLOPs x its measured amounts)."""
    per_layer = sampler.known.sum(1) - (np.asarray(sampler.counts) <=
                                        np.asarray(sampler.floors)[:, None]).sum(1)
    return {"measured_per_layer": [int(m) for m in per_layer],
            "suffix_share_per_layer": [round(float(s), 3) for s in sampler.share],
            "forward_equivalents_per_layer": [round(float(m * s), 1)
                                              for m, s in zip(per_layer, sampler.share, strict=True)]}


def _max_rel(ref: CurveSampler, exact: np.ndarray) -> float:
    got, want = ref.values[ref.known], exact[ref.known]
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))


class _Replay(CurveSampler):
    """A sampler whose measurements read a stored table (same grid, shares and floors as the
    sampler that measured it): schedules compared at no forward cost."""

    def __init__(self, table: np.ndarray, like: CurveSampler) -> None:  # no model: no super()
        self.table, self.targets, self.amounts = table, like.targets, like.amounts
        self.sizes, self.counts, self.floors, self.share = like.sizes, like.counts, like.floors, like.share
        self.values = np.zeros_like(table)
        self.known = self.counts <= np.asarray(self.floors)[:, None]
        self.forwards, self.dense, self.measured, self.sweeps = 0.0, 0.0, 0, 0
        self.stages = like.stages

    def sweep(self, requests, refine=None, label: str = "") -> None:
        self.sweeps += 1
        self.dense = 1.0  # one dense pass; later sweeps reuse the kept activations
        for li in range(len(self.targets)):
            self.measure(li, requests(li), [])
            while refine is not None and (more := [k for k in refine(li) if not self.known[li, k]]):
                self.measure(li, more, [])

    def measure(self, li: int, idxs, state) -> None:
        todo = sorted({int(k) for k in idxs if not self.known[li, k]})
        self.values[li, todo] = self.table[li, todo]
        self.known[li, todo] = True
        self.measured += len(todo)
        self.forwards += len(todo) * self.share[li]


def _near_picks_only(replay: _Replay, coarse: list[int], k: int) -> DPSolution:
    """Coarse grid, then each DP pick and its neighbours until the picks are all measured."""
    replay.sweep(lambda li: coarse)
    while True:
        sol = solve_dp(replay.curves(), replay.sizes, replay.amounts, k, floors=replay.floors,
                       caps=replay.sizes)
        K = len(replay.amounts)
        near = {li: [j for j in (ki - 1, ki, ki + 1) if 0 <= j < K and not replay.known[li, j]]
                for li, ki in enumerate(sol.grid_index)}
        if not any(near.values()):
            return sol
        replay.sweep(near.__getitem__)


def schedules(truth: np.ndarray, like: CurveSampler, k: int, oracle: DPSolution) -> dict[str, Any]:
    """Each schedule's cost and accuracy on the `truth` curves, against the `oracle` DP."""
    L, K = truth.shape
    out: dict[str, Any] = {}

    def score(name: str, replay: _Replay, sol: DPSolution) -> None:
        cost = replay.forwards + replay.dense
        ours = float(sum(truth[li, ki] for li, ki in enumerate(sol.grid_index)))
        out[name] = {
            "forward_equivalents": round(cost, 1), "flop_ratio_vs_reference": round(L * K / cost, 1),
            "measured": replay.measured,
            "objective_gap_pct": round(100 * (ours - oracle.objective) / oracle.objective, 3),
            "allocation_max_diff_units": round(max(abs(a - b) / oracle.unit for a, b in
                                                   zip(sol.counts, oracle.counts, strict=True)), 2),
        }

    for coarse in (6, 11, 21):
        replay = _Replay(truth, like)
        step = dp_step(None, like.targets, None, k, LayerDPOptions(coarse_amounts=coarse),
                       sampler=replay)
        score(f"default, coarse {coarse} uniform", replay, step.solution)
    for name, grid in (("11 uniform", like.coarse(11)), ("21 uniform", like.coarse(21)),
                       ("12 toward high amounts", list(TOWARD_HIGH))):
        replay = _Replay(truth, like)
        score(f"near the picks only, coarse {name}", replay, _near_picks_only(replay, grid, k))
    return out
