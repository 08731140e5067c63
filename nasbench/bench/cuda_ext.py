"""`nasbench bench cuda_ext`: exact global k-th |w| selection against the usual PyTorch ways.

Cases: `linear335m` (20 x 4096x4096 fp32 weights, 335M) and `resnet50` (torchvision, Conv and
Linear weights); `--quick` uses 20 x 512x512 and resnet18. Methods, each in its own subprocess
so time and extra peak memory are clean:

- `cuda_ext`: `cuda_ext.kth_smallest_abs` (selection) and `global_magnitude_masks` (selection +
  exact-k masks), on the active backend;
- `kthvalue`: `torch.kthvalue` on the concatenation of |w|;
- `global_unstructured`: `torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=k)`.

Extra peak memory is peak RSS during the op minus RSS just before it (CUDA: peak allocated bytes
minus allocated before). Goals: >= 10x faster than kthvalue, >= 40x faster than
global_unstructured, extra peak <= 1% of the weights' bytes.
`--set` params (`CudaExtSettings`): cases=linear335m,resnet50; methods=cuda_ext,kthvalue,global_unstructured;
sparsity=0.9; reps=3 (best-of for cuda_ext and kthvalue; global_unstructured runs once).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Annotated, Any

from pydantic import Field, PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, names_of

CASES = ("linear335m", "resnet50")
METHODS = ("cuda_ext", "kthvalue", "global_unstructured")


class CudaExtSettings(BenchSettings):
    cases: names_of(CASES, "case") = list(CASES)
    methods: names_of(METHODS, "method") = list(METHODS)
    sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9  # k = 0 or every weight: no selection
    reps: PositiveInt = 3


@benchmark(
    "cuda_ext",
    help="exact global k-th |w| (cuda_ext) vs torch.kthvalue and prune.global_unstructured",
    options=CudaExtSettings,
)
def run(opts: BenchOptions) -> dict[str, Any]:
    s = CudaExtSettings.of(opts)
    figures: dict[str, Any] = {"sparsity": s.sparsity}
    for case in s.cases:
        spec = {"case": case, "quick": opts.quick, "device": opts.device, "seed": opts.seed,
                "sparsity": s.sparsity, "reps": s.reps}
        rows = {m: _in_subprocess({**spec, "method": m}) for m in s.methods}
        figures[case] = {**rows, **_ratios(rows)}
    return figures


def _ratios(rows: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ours = rows.get("cuda_ext")
    if ours is None:
        return out
    if "kthvalue" in rows:
        out["speedup_vs_kthvalue"] = round(rows["kthvalue"]["select_s"] / ours["select_s"], 1)
        out["same_threshold_as_kthvalue"] = rows["kthvalue"]["threshold"] == ours["threshold"]
    if "global_unstructured" in rows:
        gu = rows["global_unstructured"]
        out["speedup_select_vs_global_unstructured"] = round(gu["masks_s"] / ours["select_s"], 1)
        out["speedup_masks_vs_global_unstructured"] = round(gu["masks_s"] / ours["masks_s"], 1)
        out["same_pruned_count_as_global_unstructured"] = gu["pruned"] == ours["pruned"]
    out["extra_peak_pct_of_weights"] = round(100 * ours["extra_peak_bytes"] / ours["weight_bytes"], 3)
    return out


def _in_subprocess(spec: dict) -> dict[str, Any]:
    """Run one (case, method) in a fresh interpreter; returns its JSON figures."""
    proc = subprocess.run(
        [sys.executable, "-m", "nasbench.bench.cuda_ext", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cuda_ext bench {spec['case']}/{spec['method']} failed: {tail}")
    return json.loads(lines[-1])


# -- child process ---------------------------------------------------------------------------
def _weights(case: str, quick: bool, device: str, seed: int):
    """(modules holding the weights, list of weight tensors) for a case."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        if case == "linear335m":
            n = 512 if quick else 4096
            layers = [torch.nn.Linear(n, n, bias=False, device="meta") for _ in range(20)]
            for layer in layers:
                layer.weight = torch.nn.Parameter(torch.randn(n, n, device=device))
            model = torch.nn.Sequential(*layers)
        else:
            import torchvision

            model = (torchvision.models.resnet18 if quick else torchvision.models.resnet50)()
            model = model.to(device)
    pairs = [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    return pairs, [getattr(m, name) for m, name in pairs]


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> str:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5) so the peak belongs to the op."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (peak could not be reset; may under-report)"


def _peak_rss_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(spec: dict) -> dict[str, Any]:
    import torch

    import cuda_ext

    device = spec["device"]
    cuda = device.startswith("cuda")
    pairs, weights = _weights(spec["case"], spec["quick"], device, spec["seed"])
    n = sum(w.numel() for w in weights)
    k = round(spec["sparsity"] * n)
    row: dict[str, Any] = {
        "weights": n,
        "weight_bytes": sum(w.numel() * w.element_size() for w in weights),
        "k": k,
    }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, reps: int):
        best, out = float("inf"), None
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best, out

    method = spec["method"]
    if method == "cuda_ext":
        cuda_ext.kth_smallest_abs([torch.ones(4, device=device)], 1)  # load the extension
        row["backend"] = cuda_ext.backend()
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        row["peak_method"] = "torch.cuda.max_memory_allocated"
    else:
        row["peak_method"] = _reset_peak_rss()
        before = _status_bytes("VmRSS")
    row["rss_before_op_bytes"] = before
    reps = spec["reps"]
    with torch.no_grad():
        if method == "cuda_ext":
            row["select_s"], row["threshold"] = timed(
                lambda: cuda_ext.kth_smallest_abs(weights, k), reps
            )
            selection_peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
            row["masks_s"], masks = timed(lambda: cuda_ext.global_magnitude_masks(weights, k), reps)
            row["pruned"] = int(sum(int((~m).sum()) for m in masks))
        elif method == "kthvalue":

            def kthvalue() -> float:
                flat = torch.cat([w.detach().reshape(-1).abs() for w in weights])
                return torch.kthvalue(flat, k).values.item()

            row["select_s"], row["threshold"] = timed(kthvalue, reps)
            selection_peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
        else:
            from torch.nn.utils import prune

            row["masks_s"], _ = timed(
                lambda: prune.global_unstructured(
                    pairs, pruning_method=prune.L1Unstructured, amount=k
                ),
                1,
            )
            selection_peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
            row["pruned"] = int(sum(int((m.weight_mask == 0).sum()) for m, _ in pairs))
    row["extra_peak_bytes"] = max(0, selection_peak - before)
    row["load_avg_1m"] = round(os.getloadavg()[0], 1)  # shared machines: context for the timings
    return row


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
