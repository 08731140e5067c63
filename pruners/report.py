"""Sparsity per layer and overall, by parameter count and by FLOPs.

FLOPs come from `torch.utils.flop_counter` on one forward of `example_input`; a layer's kept
FLOPs are its dense FLOPs times its kept-weight fraction (unstructured sparsity skips
multiply-adds in proportion to zero weights). `nn.MultiheadAttention` runs its projections
inside one functional call, so the counter sees only the whole attention; its projection
weights get 2·(rows)·(weight elements) from the token counts of that forward instead.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruners.masks import live_masks
from pruners.selection import DEFAULT_TYPES, weight_attrs

GLOBAL = "__global__"


def _tokens(x: torch.Tensor) -> int:
    """Rows a projection is applied to: every element but the feature dimension."""
    return x.numel() // x.shape[-1]


def _attention_flops(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> dict[str, int]:
    """Dense FLOPs of each projection weight of one attention call, keyed by attribute path."""
    q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
    rows = {"q": _tokens(q), "k": _tokens(k), "v": _tokens(v)}
    e = module.embed_dim
    out = {"out_proj.weight": 2 * rows["q"] * e * e}
    if getattr(module, "in_proj_weight", None) is not None:
        out["in_proj_weight"] = 2 * e * e * (rows["q"] + rows["k"] + rows["v"])
    else:
        out.update({"q_proj_weight": 2 * rows["q"] * e * e, "k_proj_weight": 2 * rows["k"] * e * module.kdim,
                    "v_proj_weight": 2 * rows["v"] * e * module.vdim})
    return out


def _layer_flops(model: nn.Module, example_input: Any) -> tuple[dict[str, int], int]:
    """Dense FLOPs per weight (`layer.weight` keys) and the model's total."""
    root = type(model).__name__
    attention: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            def record(mod, args, kwargs, prefix=f"{name}." if name else ""):
                for key, f in _attention_flops(mod, args, kwargs).items():
                    attention[prefix + key] = attention.get(prefix + key, 0) + f
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:  # grad on: attention's fused inference kernels are invisible to the counter
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    per_weight = {
        f"{key[len(root) + 1:]}.weight": int(sum(ops.values()))
        for key, ops in counts.items()
        if key.startswith(root + ".")
    }
    per_weight.update(attention)
    return per_weight, int(counter.get_total_flops())


def sparsity_report(model: nn.Module, example_input=None) -> pd.DataFrame:
    """One row per Conv/Linear/attention (or pruned) weight plus a `__global__` row.

    Columns: layer, type, shape, params, kept, pruned, sparsity, flops, kept_flops,
    flop_sparsity. Global params/kept/pruned are sums over the rows; global flops is the
    model's total counted FLOPs (layers plus e.g. attention matmuls), so FLOP columns are NaN
    without `example_input`.
    """
    masks = live_masks(model)
    flops, total_flops = _layer_flops(model, example_input) if example_input is not None else (
        {}, math.nan)
    pruned_attrs: dict[str, list[str]] = {}
    for key in masks:
        module_name, _, attr = key.rpartition(".")
        pruned_attrs.setdefault(module_name, []).append(attr)
    rows = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        default = weight_attrs(module) if isinstance(module, DEFAULT_TYPES) else ()
        for attr in dict.fromkeys([*default, *pruned_attrs.get(name, ())]):
            key = prefix + attr
            weight = getattr(module, attr + "_orig", getattr(module, attr, None))
            n = weight.numel()
            kept = int(masks[key].count_nonzero()) if key in masks else int(torch.count_nonzero(weight))
            f = flops.get(key, math.nan)
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
