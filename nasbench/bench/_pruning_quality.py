"""Pruning quality on mnist5k: accuracy and output distortion per method and sparsity.

Models: LeNet-300-100 (MLP) and a small CNN, trained dense with Adam. One-shot methods prune a
copy of the dense model, then fine-tune it briefly with the masks kept; `_mt` variants keep at
least 1% of every layer. Lottery tickets run IMP (20% of the remaining weights per level,
rewinding to iteration 50; 10 in --quick; the output layer dense) and are compared with their
two controls: random masks with the ticket's per-layer counts, and the ticket's masks on weights
re-drawn from the initialisation. Accuracy is on the held-out split (1,000 images);
distortion is the output-logit MSE against the dense model on that split, before fine-tuning.
The DP budget-discretisation error is measured on the same trained models against the exact
solve (B = N, one unit per weight).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pruners
from nasbench.classify import adam_train_fn
from nasbench.data import load_dataset
from pruners.baselines import layerwise_masks
from pruners.layer_dp import distortion_curves, layer_macs, solve_dp
from pruners.magnitude import min_keep_counts

METHODS = ("global_magnitude", "global_magnitude_mt", "uniform", "erk", "lamp", "layer_dp",
           "layer_dp_mt")
MIN_KEEP = 0.01  # the `_mt` variants keep >= 1% of every layer (minimum-threshold rule)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                         nn.ReLU(), nn.Linear(100, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def make_train_fn(x: torch.Tensor, y: torch.Tensor, seed: int, batch_size: int = 128,
                  lr: float = 1e-3):
    """`train_fn(model, start, end, on_step)` with Adam on in-memory tensors; each epoch's
    order is seeded by (seed, epoch), so a rewound level sees the dense run's batches."""

    def batches(epoch: int, start: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(start * batch_size, len(x), batch_size):
            yield x[order[i : i + batch_size]], y[order[i : i + batch_size]]

    return adam_train_fn(batches, math.ceil(len(x) / batch_size), lr)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.eval()
    out = model(x)
    return float((out.argmax(1) == y).float().mean()), out


def _finetune(model, train_fn, span):
    """Fine-tune, keeping the masks if the model has any (a shrunk model has none)."""
    keep = pruners.MaskKeeper(model) if pruners.get_masks(model) else (lambda: None)
    train_fn(model, pruners.Span(0, "it"), span, lambda it, ep: keep())


def quality(*, full: bool, quick: bool, seed: int) -> dict[str, Any]:
    sparsities = [0.5, 0.8, 0.9, 0.95, 0.98] if full else [0.8, 0.95]
    seeds = [seed, seed + 1] if full else [seed]
    models = {"mlp": mlp, "cnn": cnn} if full else {"mlp": mlp}
    epochs = 1 if quick else (6 if full else 3)
    rows, dp_err = [], []
    started = time.perf_counter()
    for s_idx in seeds:
        data = load_dataset(name="mnist5k", batch_size=128, seed=s_idx)
        xv, yv = (torch.cat(t) for t in zip(*data.val_loader, strict=True))
        xt, yt = (torch.cat(t) for t in zip(*data.train_loader, strict=True))
        calib = xt[:1024]
        train_fn = make_train_fn(xt, yt, s_idx)
        for mname, factory in models.items():
            torch.manual_seed(s_idx)
            dense = factory()
            init = copy.deepcopy(dense)
            train_fn(dense, pruners.Span(0, "it"), pruners.Span(epochs, "ep"), lambda it, ep: None)
            dense_acc, dense_out = evaluate(dense, xv, yv)
            base = {"model": mname, "seed": s_idx}
            rows.append({**base, "method": "dense", "sparsity": 0.0, "acc": dense_acc,
                         "acc_finetuned": dense_acc, "distortion": 0.0})
            targets = pruners.select_targets(dense)
            sizes = [t.numel for t in targets]
            n = sum(sizes)
            amounts = np.linspace(0, 1, 101)
            curves = distortion_curves(dense, targets, calib, amounts)
            for sp in sparsities:
                k = round(sp * n)
                dp_err.append({**base, "sparsity": sp, **_dp_error(curves, sizes, amounts, k)})
                for method in METHODS:
                    model = copy.deepcopy(dense)
                    _prune(model, method, sp, curves, amounts)
                    acc, out = evaluate(model, xv, yv)
                    dist = float((out - dense_out).square().mean())
                    _finetune(model, train_fn, pruners.Span(1, "ep"))
                    rows.append({**base, "method": method, "sparsity": sp, "acc": acc,
                                 "acc_finetuned": evaluate(model, xv, yv)[0],
                                 "distortion": dist})
            rows.extend(_equal_macs(dense, targets, curves, amounts, sparsities, train_fn, calib,
                                    xv, yv, dense_out, base))
            rows.extend(_lottery(init, train_fn, epochs, sparsities, n, xv, yv, base))
    df = pd.DataFrame(rows)
    table = (df.groupby(["model", "method", "sparsity"])[["acc", "acc_finetuned", "distortion",
                                                          "macs_removed"]]
             .agg(["mean", "std"]).round(4))
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    err = pd.DataFrame(dp_err).groupby(["model", "sparsity"]).mean(numeric_only=True)
    return {
        "mode": "full" if full else "quick", "seeds": seeds, "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "table": table.reset_index().to_dict(orient="records"),
        "dp_budget_error": err.drop(columns="seed").round(6).reset_index().to_dict(
            orient="records"),
    }


def _prune(model, method, sp, curves, amounts) -> None:
    if method.startswith("layer_dp"):  # the dense model's curves serve every sparsity (one-shot)
        targets = pruners.select_targets(model)
        sizes = [t.numel for t in targets]
        keep = min_keep_counts(sizes, MIN_KEEP if method.endswith("_mt") else 0)
        sol = solve_dp(curves, sizes, amounts, round(sp * sum(sizes)),
                       caps=[n - c for n, c in zip(sizes, keep, strict=True)])
        masks = layerwise_masks(targets, sol.counts)
        pruners.apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
    elif method == "global_magnitude_mt":
        pruners.prune(model, "global_magnitude", sp, min_keep=MIN_KEEP)
    else:
        pruners.prune(model, method, sp)


def _equal_macs(dense, targets, curves, amounts, sparsities, train_fn, calib, xv, yv, dense_out,
                base) -> list[dict]:
    """At each MAC fraction removed (the sparsity column): unstructured layer-DP with the FLOPs
    budget (`layer_dp_flops`, one-shot from the dense curves, >= 1% of each layer kept) against
    channel pruning with a MACs budget (`structured_layer_dp`, a physically smaller model) and
    uniform channels
    (`structured_uniform`, removing the channel fraction that removes at least as many MACs).
    `macs_removed` is measured: flop_counter on the shrunk model, or each layer's MACs times its
    pruned fraction for masks (what a sparse kernel could skip)."""
    example = calib[:1]
    macs = layer_macs(dense, targets, example)
    sizes = [t.numel for t in targets]
    prices = [round(m / n) for m, n in zip(macs, sizes, strict=True)]
    dense_macs = _module_macs(dense, example)
    caps = [n - c for n, c in zip(sizes, min_keep_counts(sizes, MIN_KEEP), strict=True)]
    rows = []
    for sp in sparsities:
        model = copy.deepcopy(dense)
        goal = math.ceil(sp * sum(macs))
        sol = solve_dp(curves, sizes, amounts, goal, prices=prices, caps=caps)
        model_targets = pruners.select_targets(model)
        masks = layerwise_masks(model_targets, sol.counts)
        pruners.apply_masks(model, {t.name: m for t, m in zip(model_targets, masks, strict=True)})
        removed = sum(m * c / n for m, c, n in zip(macs, sol.counts, sizes, strict=True))
        rows.append(_scored(model, "layer_dp_flops", sp, removed / sum(macs), train_fn, xv, yv,
                            dense_out, base))
        for method, kwargs in (("layer_dp", {"budget": "macs", "min_keep": MIN_KEEP_CHANNELS}),
                               ("uniform", {"min_keep": MIN_KEEP_CHANNELS})):
            amount = sp if method == "layer_dp" else _uniform_amount(dense, sp, example, dense_macs)
            if amount is None:
                continue
            try:
                small = pruners.shrink(dense, method, amount, example_input=example, **kwargs)
            except pruners.PruneError:
                continue  # the MAC fraction is out of reach within min_keep
            frac = 1 - _module_macs(small, example) / dense_macs
            rows.append(_scored(small, f"structured_{method}", sp, frac, train_fn, xv, yv,
                                dense_out, base))
    return rows


MIN_KEEP_CHANNELS = 0.05  # structured rows keep >= 5% of every channel group


def _module_macs(model: nn.Module, example: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def _uniform_amount(dense, sp, example, dense_macs) -> float | None:
    """The smallest uniform channel fraction (on a 1% grid) that removes >= sp of the MACs."""
    for pct in range(1, 96):
        try:
            small = pruners.shrink(dense, "uniform", pct / 100, example_input=example,
                                   min_keep=MIN_KEEP_CHANNELS)
        except pruners.PruneError:
            return None
        if 1 - _module_macs(small, example) / dense_macs >= sp:
            return pct / 100
    return None


def _scored(model, method, sp, macs_removed, train_fn, xv, yv, dense_out, base) -> dict:
    acc, out = evaluate(model, xv, yv)
    dist = float((out - dense_out).square().mean())
    _finetune(model, train_fn, pruners.Span(1, "ep"))
    return {**base, "method": method, "sparsity": sp, "macs_removed": macs_removed, "acc": acc,
            "acc_finetuned": evaluate(model, xv, yv)[0], "distortion": dist}


def _dp_error(curves, sizes, amounts, k) -> dict[str, float]:
    """Objective gap of coarse budgets against the exact (one unit per weight) DP solve."""
    exact = solve_dp(curves, sizes, amounts, k, budget_units=sum(sizes)).objective
    out = {"exact_objective": exact}
    for b in (64, 256, 1024, 4096):
        sol = solve_dp(curves, sizes, amounts, k, budget_units=b)
        out[f"rel_gap_B{b}"] = (sol.objective - exact) / exact if exact > 0 else 0.0
        out[f"slack_pct_B{b}"] = 100 * sol.slack / sum(sizes)
    return out


def _lottery(init, train_fn, epochs, sparsities, n, xv, yv, base) -> list[dict]:
    """IMP with rewinding to iteration 50, the output layer dense (open_lth's default); at the
    levels nearest each sparsity, the ticket against both controls trained on its schedule:
    `random` (random masks with the ticket's per-layer counts, on its rewind weights) and
    `reinit` (its masks on weights re-drawn from the initialisation)."""
    levels = math.ceil(math.log(1 - max(sparsities)) / math.log(0.8))
    want = {round(math.log(1 - sp) / math.log(0.8)): sp for sp in sparsities}
    ticket, found = copy.deepcopy(init), {}

    def on_level(level, model):
        if level in want:
            found[level] = (pruners.get_masks(model), evaluate(model, xv, yv)[0])

    rewind = "50it" if epochs >= 2 else "10it"
    with tempfile.TemporaryDirectory() as tmp:
        pruners.lottery_ticket(ticket, train_fn, levels=levels, rewind=rewind,
                               train=f"{epochs}ep", on_level=on_level, out_dir=tmp,
                               seed=base["seed"])
        states = {name: safetensors.torch.load_file(f"{tmp}/{name}.safetensors")
                  for name in ("init", "rewind")}
    rows = []
    for level, (masks, acc) in sorted(found.items()):
        sp = sum(int((~m).sum()) for m in masks.values()) / n
        rows.append({**base, "method": f"lottery_rewind{rewind}", "sparsity": want[level],
                     "actual_sparsity": sp, "acc": acc, "acc_finetuned": acc})
        for kind in pruners.lottery.CONTROLS:
            control = copy.deepcopy(init)
            pruners.lottery_control(control, masks, kind, train_fn, rewind_state=states["rewind"],
                                    init_state=states["init"], rewind=rewind, train=f"{epochs}ep",
                                    seed=base["seed"] + 100 + level)
            acc_control = evaluate(control, xv, yv)[0]
            rows.append({**base, "method": f"lottery_{kind}", "sparsity": want[level],
                         "actual_sparsity": sp, "acc": acc_control, "acc_finetuned": acc_control})
    return rows
