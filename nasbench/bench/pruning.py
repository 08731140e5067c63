"""`nasbench bench pruning`: our pruners against torch's, side by side.

Parts (`--set parts=speed,dp,quality,structured`):

- `speed`: global magnitude at 90% vs `torch.nn.utils.prune.global_unstructured(L1Unstructured)`
  on 20 x Linear(4096, 4096) (335M weights), 20 x Linear(2048, 2048) (84M) and torchvision
  resnet50; `--quick`: 20 x 512x512 and resnet18. Each (case, method) runs in its own
  subprocess; extra peak memory is the VmHWM high-water mark (reset through
  /proc/self/clear_refs just before the op) minus RSS before it. `ours_select` computes the
  exact masks (`pruners.global_magnitude`); `ours_prune` is the full `pruners.prune` call that
  also installs them in torch's `weight_orig`/`weight_mask` form (which itself costs one masked
  weight copy: torch's hook keeps `weight = weight_orig * weight_mask`); `ours_permanent` is
  `pruners.prune_permanent`, which zeroes weights in place one layer at a time and keeps no
  mask. The peer on the 335M case needs ~18 GiB; it runs only when that much memory is
  available (or `--set peer_large=1`).
- `dp`: the layer-DP solve for resnet50's 54 layers with K=101 amounts at several budget
  resolutions B (curves synthetic: the solve time does not depend on their values).
- `structured`: channel pruning, ours vs Torch-Pruning's MagnitudePruner: measured size and
  onnxruntime latency of ResNet-18 at 50% channels, accuracy after the same fine-tune on
  mnist5k (see `nasbench/bench/_pruning_structured.py`).
- `layer_dp`: fast layer-DP (cached suffixes, coarse-to-fine amounts) against the reference
  computation on ResNet-18, 1,024 images, K=101, and other amount schedules replayed on the
  measured curves (see `nasbench/bench/_pruning_dp.py`).
- `quality`: mnist5k accuracy/distortion table (see `nasbench/bench/_pruning_quality.py`);
  `--set quality=full` for the full table (2 models x 2 seeds x 5 sparsities), else a quick one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from nasbench.bench.registry import BenchOptions, BenchSettings, Flag, benchmark, names_of

PARTS = ("speed", "dp", "quality", "structured", "layer_dp")
GiB = 1 << 30


class PruningSettings(BenchSettings):
    parts: names_of(PARTS, "part") = list(PARTS)
    quality: Literal["quick", "full"] = "quick"
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    structured: names_of(("speed", "accuracy"), "structured part") = ["speed", "accuracy"]
    peer_large: Flag = False  # run torch's peer on the 335M case even without ~20 GiB free
    dp_samples: Annotated[int, Field(ge=2)] = 1024  # layer_dp part: calibration images
    dp_sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    dp_reference_full: Flag = False  # layer_dp part: time the whole reference (~1 h), no subset
    dp_model: Literal["random", "mnist5k"] = "random"  # layer_dp part: random init or trained


@benchmark("pruning", help="global magnitude vs torch global_unstructured; DP solve; mnist5k",
           options=PruningSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    s = PruningSettings.of(opts)
    figures: dict[str, Any] = {}
    if "speed" in s.parts:
        figures["speed"] = _speed(opts)
    if "dp" in s.parts:
        figures["dp_solve"] = _in_subprocess({"job": "dp", "quick": opts.quick})
    if "quality" in s.parts:
        from nasbench.bench._pruning_quality import quality

        figures["quality"] = quality(full=s.quality == "full", quick=opts.quick, seed=opts.seed)
    if "structured" in s.parts:
        from nasbench.bench._pruning_structured import structured

        figures["structured"] = structured(s.structured, quick=opts.quick, seed=opts.seed)
    if "layer_dp" in s.parts:
        from nasbench.bench._pruning_dp import layer_dp_vs_reference

        figures["layer_dp"] = layer_dp_vs_reference(
            samples=8 if opts.quick else s.dp_samples, sparsity=s.dp_sparsity, seed=opts.seed,
            reference_full=s.dp_reference_full, model_kind=s.dp_model)
    return figures


def _speed(opts: BenchOptions) -> dict[str, Any]:
    s = PruningSettings.of(opts)
    sparsity = s.sparsity
    cases = ["linear335m", "linear84m", "resnet50"] if not opts.quick else ["linear5m", "resnet18"]
    out: dict[str, Any] = {"sparsity": sparsity}
    for case in cases:
        spec = {"job": "speed", "case": case, "sparsity": sparsity, "seed": opts.seed}
        rows = {m: _in_subprocess({**spec, "method": m})
                for m in ("ours_select", "ours_prune", "ours_permanent")}
        big = case == "linear335m"
        if not big or _mem_available() > 20 * GiB or s.peer_large:
            rows["global_unstructured"] = _in_subprocess({**spec, "method": "global_unstructured"})
        else:
            rows["global_unstructured"] = {
                "skipped": f"needs ~18 GiB, {_mem_available() / GiB:.1f} GiB available; "
                "issue baseline on this machine: 85 s, 18.1 GiB peak RSS"}
        out[case] = {**rows, **_ratios(rows)}
    return out


def _ratios(rows: dict[str, dict]) -> dict[str, Any]:
    sel, full, peer = rows["ours_select"], rows["ours_prune"], rows["global_unstructured"]
    perm = rows["ours_permanent"]
    w = sel["weight_bytes"]
    out = {
        "select_extra_peak_pct_of_weights": round(100 * sel["extra_peak_bytes"] / w, 2),
        "prune_extra_peak_pct_of_weights": round(100 * full["extra_peak_bytes"] / w, 2),
        "permanent_extra_peak_pct_of_weights": round(100 * perm["extra_peak_bytes"] / w, 2),
    }
    if "seconds" in peer:
        out.update({
            "speedup_select": round(peer["seconds"] / sel["seconds"], 1),
            "speedup_prune": round(peer["seconds"] / full["seconds"], 1),
            "speedup_permanent": round(peer["seconds"] / perm["seconds"], 1),
            "peer_extra_peak_pct_of_weights": round(100 * peer["extra_peak_bytes"] / w, 2),
            "same_pruned_per_layer": sel["pruned_per_layer"] == peer["pruned_per_layer"]
            == full["pruned_per_layer"] == perm["pruned_per_layer"],
        })
    return out


def _proc_field(path: str, field: str) -> int:
    """A `Name:  N kB` field of a /proc file, in bytes."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from {path}")


def _mem_available() -> int:
    return _proc_field("/proc/meminfo", "MemAvailable")


def _in_subprocess(spec: dict) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "nasbench.bench.pruning", json.dumps(spec)],
                          capture_output=True, text=True, check=False, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pruning bench {spec} failed: {tail}")
    return json.loads(lines[-1])


# -- child process -------------------------------------------------------------------------
def _status(field: str) -> int:
    return _proc_field("/proc/self/status", field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
        f.write("5")


def _model(case: str, seed: int):
    import torch
    import torchvision

    torch.manual_seed(seed)
    if case.startswith("linear"):
        n = {"linear335m": 4096, "linear84m": 2048, "linear5m": 512}[case]
        layers = [torch.nn.Linear(n, n, bias=False, device="meta") for _ in range(20)]
        with torch.no_grad():
            for layer in layers:
                layer.weight = torch.nn.Parameter(torch.randn(n, n))
        return torch.nn.Sequential(*layers)
    return getattr(torchvision.models, case)()


def _speed_child(spec: dict) -> dict[str, Any]:
    import torch
    from torch.nn.utils import prune as torch_prune

    import pruners

    model = _model(spec["case"], spec["seed"])
    pairs = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d |
                                                                   torch.nn.Linear)]
    weights = [m.weight for m, _ in pairs]
    n = sum(w.numel() for w in weights)
    s = spec["sparsity"]
    pruners.global_magnitude([torch.ones(4)], 1)  # load the selection kernels first
    before = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():
        if spec["method"] == "ours_select":
            masks = pruners.global_magnitude([w.detach() for w in weights], round(s * n))
        elif spec["method"] == "ours_prune":
            masks = list(pruners.prune(model, "global_magnitude", s).values())
        elif spec["method"] == "ours_permanent":
            pruners.prune_permanent(model, "global_magnitude", s)
        else:
            torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured,
                                            amount=s)
            masks = [m.weight_mask for m, _ in pairs]
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    if spec["method"] == "ours_permanent":
        masks = [w != 0 for w in weights]  # randn weights: no zero before pruning
    return {
        "weights": n, "weight_bytes": 4 * n, "seconds": round(seconds, 3),
        "extra_peak_bytes": max(0, peak - before),
        "pruned": sum(int((m == 0).sum()) for m in masks),
        "pruned_per_layer": [int((m == 0).sum()) for m in masks],
    }


def _dp_child(spec: dict) -> dict[str, Any]:
    import numpy as np
    import torch
    import torchvision

    from pruners.layer_dp import solve_dp

    with torch.device("meta"):
        model = (torchvision.models.resnet18 if spec["quick"] else torchvision.models.resnet50)()
    sizes = [m.weight.numel() for m in model.modules()
             if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    rng = np.random.default_rng(0)
    amounts = np.linspace(0, 1, 101)
    curves = rng.random((len(sizes), 1)) * amounts[None, :] ** 2 * (1 + 10 * amounts[None, :] ** 8)
    n = sum(sizes)
    out: dict[str, Any] = {"layers": len(sizes), "weights": n, "K": len(amounts)}
    for units in (1024, 4096, 16384, 65536):
        before = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        sol = solve_dp(curves, sizes, amounts, round(0.9 * n), budget_units=units)
        seconds = time.perf_counter() - t0
        out[f"B={units}"] = {
            "seconds": round(seconds, 3), "extra_peak_bytes": max(0, _status("VmHWM") - before),
            "objective": sol.objective, "slack_weights": sol.slack,
            "exact_count": sum(sol.counts) == round(0.9 * n),
        }
    return out


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    fn = {"speed": _speed_child, "dp": _dp_child}[job["job"]]
    print(json.dumps(fn(job)))
