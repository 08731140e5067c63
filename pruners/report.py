"""Sparsity per layer and overall, by parameter count and by FLOPs.

FLOPs come from `torch.utils.flop_counter` on one forward of `example_input`; a layer's kept
FLOPs are its dense FLOPs times its kept-weight fraction (unstructured sparsity skips
multiply-adds in proportion to zero weights).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruners.masks import live_masks
from pruners.selection import DEFAULT_TYPES

GLOBAL = "__global__"


def _layer_flops(model: nn.Module, example_input) -> tuple[dict[str, int], int]:
    root = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    per_module = {
        key[len(root) + 1 :]: int(sum(ops.values()))
        for key, ops in counts.items()
        if key.startswith(root + ".")
    }
    return per_module, int(counter.get_total_flops())


def sparsity_report(model: nn.Module, example_input=None) -> pd.DataFrame:
    """One row per Conv/Linear (or pruned) weight plus a `__global__` row.

    Columns: layer, type, shape, params, kept, pruned, sparsity, flops, kept_flops,
    flop_sparsity. Global params/kept/pruned are sums over the rows; global flops is the
    model's total counted FLOPs (layers plus e.g. attention matmuls), so FLOP columns are NaN
    without `example_input`.
    """
    masks = live_masks(model)
    flops, total_flops = _layer_flops(model, example_input) if example_input is not None else (
        {}, math.nan)
    rows = []
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in masks and not isinstance(module, DEFAULT_TYPES):
            continue
        weight = getattr(module, "weight_orig", getattr(module, "weight", None))
        if weight is None:
            continue
        n = weight.numel()
        kept = int(masks[key].count_nonzero()) if key in masks else int(torch.count_nonzero(weight))
        f = flops.get(name, math.nan) if example_input is not None else math.nan
        rows.append({
            "layer": key, "type": type(module).__name__, "shape": tuple(weight.shape),
            "params": n, "kept": kept, "pruned": n - kept, "sparsity": 1 - kept / n,
            "flops": f, "kept_flops": f * kept / n,
        })
    df = pd.DataFrame(rows)
    n_all, kept_all = int(df["params"].sum()), int(df["kept"].sum())
    saved = float((df["flops"] - df["kept_flops"]).sum()) if example_input is not None else math.nan
    glob = {
        "layer": GLOBAL, "type": type(model).__name__, "shape": None, "params": n_all,
        "kept": kept_all, "pruned": n_all - kept_all, "sparsity": 1 - kept_all / max(n_all, 1),
        "flops": total_flops, "kept_flops": total_flops - saved,
    }
    df = pd.concat([df, pd.DataFrame([glob])], ignore_index=True)
    df["flop_sparsity"] = 1 - df["kept_flops"] / df["flops"]
    return df
