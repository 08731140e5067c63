"""`bench pruning` part `structured`: our channel pruning against Torch-Pruning's own, in one run.

- `speed`: torchvision ResNet-18 (random weights, 3×224×224; 112 in --quick) with 50% of the
  prunable channels removed by our `uniform` and `global_magnitude` and by Torch-Pruning's
  `MagnitudePruner` (its defaults: group L2 importance, mean-reduced and mean-normalised, the
  same ratio in every group, classifier ignored), and our `layer_dp` at equal params
  (`budget: params`, amount = the fraction of the prunable params `uniform` removes, so it
  removes as many and less than one channel's worth more; zero-data mode, 8 N(0,1) inputs:
  random weights, only its size and speed count here). Measured: parameters, ONNX bytes (each graph
  exported the same way, in memory) and onnxruntime batch-1 latency on one thread (median over
  interleaved rounds, wall clock and the calling thread's CPU time, which ignores other
  processes on a shared CPU). MACs are counted by `torch.utils.flop_counter`, not measured.
  Goal: latency ≤ 0.5× dense.
- `accuracy`: ResNet-18 with a 1-channel stem on mnist5k at 28 px, trained dense with Adam
  (2 epochs), then Torch-Pruning and our `uniform`, `global_magnitude` and `layer_dp` each
  remove 50% of the channels, `layer_dp_params` / `layer_dp_macs` as many params / MACs as
  `uniform` (`budget: params` / `macs`, every group keeping >= `DP_MIN_KEEP` of its channels),
  and the shrunk model gets the same fine-tune (2
  epochs, same seed, batches and steps); accuracy on the 1,000 held-out images, params and
  counted MACs per row. Goal: within 1 point of Torch-Pruning's. `--quick` trains on 512
  images for 1 + 1 epochs (a smoke run).

`--set structured=speed` (or `accuracy`) runs one half.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

import pruners
from nasbench.data import load_dataset
from pruners.shrink_costs import removed_fraction
from pruners.structured import shrink_with_plan

AMOUNT = 0.5
DP_MIN_KEEP = 0.25
"""Each group keeps >= 1/4 of its channels under a params/MACs budget: with min_keep=1 the DP
cut ResNet-18's last block (and, for MACs, layer1.1) to 1 inner channel, lowest distortion
before fine-tuning (58% vs 10% accuracy) and 3.4 / 2.5 points below Torch-Pruning after it."""


def resnet18(in_chans: int = 3, num_classes: int = 1000) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model.eval()


def torch_pruning_shrink(model: nn.Module, amount: float, example: torch.Tensor) -> nn.Module:
    """Torch-Pruning's MagnitudePruner at its defaults, on a copy, classifier left whole."""
    import torch_pruning as tp

    out = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(out, example, importance=tp.importance.MagnitudeImportance(),
                                       pruning_ratio=amount, ignored_layers=[out.fc])
    pruner.step()
    return out.eval()


def ours_shrink(model: nn.Module, method: str, amount: float, example: torch.Tensor,
                data: torch.Tensor | None = None, **kw: Any) -> nn.Module:
    if method == "layer_dp":
        samples = 8 if data is None else min(256, len(data))
        kw = {"data": data, "num_samples": samples, "num_amounts": 11, **kw}
    return pruners.shrink(model, method, amount, example_input=example, **kw).eval()


def equal_budget_shrinks(model: nn.Module, example: torch.Tensor, budgets: tuple[str, ...],
                         data: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """`uniform` at AMOUNT of the channels, and `layer_dp` removing as many params (MACs) as it."""
    uniform, plan = shrink_with_plan(model, "uniform", AMOUNT, example_input=example)
    out = {"ours_uniform": uniform.eval()}
    for budget in budgets:
        amount = removed_fraction(model, plan, budget, example)
        out[f"ours_layer_dp_{budget}"] = ours_shrink(model, "layer_dp", amount, example, data,
                                                     budget=budget, min_keep=DP_MIN_KEEP)
    return out


def _counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Params and MACs per sample (counted by torch.utils.flop_counter) at the shape of `x`."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    model.train(was)
    return {"params": sum(p.numel() for p in model.parameters()), "macs_counted": counter.get_total_flops() // 2}


def sizes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """Params, ONNX bytes (measured) and MACs per sample (counted by torch.utils.flop_counter)."""
    from search.latency.measure import onnx_bytes

    x = torch.zeros((1, *shape))
    return {**_counts(model, x), "onnx_bytes": len(onnx_bytes(model, x))}


def latencies(models: dict[str, nn.Module], shape: tuple[int, ...], rounds: int,
              per_round: int = 3) -> dict[str, dict[str, float]]:
    """onnxruntime batch-1 latency on one thread, median ms, wall clock and thread CPU time.
    The models take turns (`rounds` × `per_round` calls each), so a burst of load from other
    processes on a shared CPU hits all of them alike instead of one."""
    from search.latency.measure import LatencySettings, prepare_runner, time_runner, torch_threads

    out: dict[str, dict[str, float]] = {}
    for clock in ("wall", "cpu"):
        s = LatencySettings(backend="onnxruntime", device="cpu", batch=1, threads=1, clock=clock).resolve()
        with torch_threads(1):
            runners = {name: prepare_runner(m, shape, s) for name, m in models.items()}
            samples: dict[str, list[float]] = {name: time_runner(r, 5, 0) for name, r in runners.items()}
            for _ in range(rounds):
                for name, runner in runners.items():
                    samples[name] += time_runner(runner, 0, per_round)
        for name, values in samples.items():
            out.setdefault(name, {})[f"ort_latency_ms_{clock}"] = round(float(np.median(values)), 3)
    return out


def speed(*, quick: bool, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    res = 112 if quick else 224
    shape = (3, res, res)
    example = torch.randn(1, *shape)
    dense = resnet18()
    models = {"dense": dense, "torch_pruning": torch_pruning_shrink(dense, AMOUNT, example)}
    seconds = {}
    t0 = time.perf_counter()
    models.update(equal_budget_shrinks(dense, example, ("params", "macs")))
    seconds["ours_uniform+layer_dp_params+layer_dp_macs"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    models["ours_global_magnitude"] = ours_shrink(dense, "global_magnitude", AMOUNT, example)
    seconds["ours_global_magnitude"] = round(time.perf_counter() - t0, 2)
    timed = latencies(models, shape, rounds=4 if quick else 15)
    rows = {name: {**sizes(m, shape), **timed[name]} for name, m in models.items()}
    base = rows["dense"]
    for row in rows.values():
        row["latency_vs_dense_wall"] = round(row["ort_latency_ms_wall"] / base["ort_latency_ms_wall"], 3)
        row["latency_vs_dense_cpu"] = round(row["ort_latency_ms_cpu"] / base["ort_latency_ms_cpu"], 3)
    ok = {name: rows[name]["latency_vs_dense_cpu"] <= 0.5 for name in rows if name.startswith("ours_")}
    return {"model": "resnet18", "input": list(shape), "channels_removed": AMOUNT, "rows": rows,
            "shrink_seconds": seconds, "goal_latency_le_half_dense": ok}


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
         lr: float = 1e-3, batch: int = 128) -> None:
    """Adam on cross-entropy, batches in a permutation seeded by (seed, epoch)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return round(float((torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).argmax(1)
                        == y).float().mean()), 4)


def accuracy(*, quick: bool, seed: int) -> dict[str, Any]:
    data = load_dataset(name="mnist5k", batch_size=128, seed=seed)
    xt, yt = (torch.cat(t) for t in zip(*data.train_loader, strict=True))
    xv, yv = (torch.cat(t) for t in zip(*data.val_loader, strict=True))
    dense_epochs, tune_epochs = (1, 1) if quick else (2, 2)
    if quick:  # a smoke run: 512 training images
        xt, yt = xt[:512], yt[:512]
    torch.manual_seed(seed)
    dense = resnet18(in_chans=1, num_classes=10)
    t0 = time.perf_counter()
    _fit(dense, xt, yt, dense_epochs, seed)
    example = xt[:1]
    rows: dict[str, Any] = {"dense": {"acc": _accuracy(dense, xv, yv), **_counts(dense, example)}}
    shrunk = {"torch_pruning": torch_pruning_shrink(dense, AMOUNT, example)}
    shrunk.update(equal_budget_shrinks(dense, example, ("params", "macs"), data=xt))
    for method in ("global_magnitude", "layer_dp"):
        shrunk[f"ours_{method}"] = ours_shrink(dense, method, AMOUNT, example, data=xt)
    for name, model in shrunk.items():
        before = _accuracy(model, xv, yv)
        _fit(model, xt, yt, tune_epochs, seed + 1)
        counted = _counts(model, example)
        rows[name] = {"acc_before_finetune": before, "acc": _accuracy(model, xv, yv), **counted}
    peer = rows["torch_pruning"]["acc"]
    for name in shrunk:
        rows[name]["points_vs_torch_pruning"] = round(100 * (rows[name]["acc"] - peer), 2)
    ok = {name: rows[name]["points_vs_torch_pruning"] >= -1.0 for name in shrunk if name != "torch_pruning"}
    return {"data": f"mnist5k 28px ({len(xt):,} train / {len(xv):,} held out)", "model": "resnet18, 1-channel stem",
            "dense_epochs": dense_epochs, "finetune_epochs": tune_epochs, "channels_removed": AMOUNT,
            "rows": rows, "goal_within_1_point_of_torch_pruning": ok,
            "seconds": round(time.perf_counter() - t0, 1)}


def structured(parts: list[str], *, quick: bool, seed: int) -> dict[str, Any]:
    """`parts` of "speed", "accuracy" (`--set structured=speed`)."""
    jobs = {"speed": speed, "accuracy": accuracy}
    return {part: jobs[part](quick=quick, seed=seed) for part in parts}
