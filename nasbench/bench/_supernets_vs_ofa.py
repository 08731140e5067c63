"""`nasbench bench supernets --set parts=ofa_extract`: our extracted subnet against OFA's own.

For OFA's MobileNetV3 (and ResNet-50, `ofa50`) supernet, `from_ofa` maps its weights into ours;
for random archs, `net.extract(arch)` is timed against OFA's
`set_active_subnet(...); get_active_subnet(preserve_weight=True)`: the same arch, the same
weights (randomised BN statistics and head, so the outputs are O(1) and must agree:
`max_abs_diff`), the same input, eval mode under
`inference_mode`, batch 1 and 16, in both memory layouts (each net moved to the layout of its
input: channels-last is OFA's best on CPU), alternated round by round (`_interleaved_ms`,
~0.2 s per net per round).
Goal: ours is never slower (`ofa_ms / ours_ms >= 1`).
"""

from __future__ import annotations

import copy
from typing import Any

LAYOUTS = ("contiguous", "channels_last")
BATCHES = (1, 16)
ROUND_S = 0.2  # ~7 calls of a 30 ms ResNet per round: at 1-2 calls, a loaded CPU's noise is ±5%


def _ofa_nets():
    """OFA's two supernet classes; imported lazily (the optional `peers` extra)."""
    try:
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3, OFAResNets
    except ImportError as exc:
        from nasbench_core.errors import UserError

        raise UserError(
            f"the ofa_extract peer needs Once-for-All: pip install ofa (the `peers` extra); {exc}"
        ) from None
    return {
        "mbv3": lambda: OFAMobileNetV3(
            n_classes=1000, dropout_rate=0.0, width_mult=1.0, ks_list=[3, 5, 7],
            expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]),
        "resnet": lambda: OFAResNets(
            n_classes=1000, dropout_rate=0.0, depth_list=[0, 1, 2],
            expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0]),
    }


def _randomised(model, seed: int):
    """Random BN statistics and affine terms, perturbed kernel transforms and an O(1) head: a
    fresh OFA net's logits are near zero, where `max_abs_diff` would prove nothing (as in
    tests/test_ofa_bridge.py). Values, not shapes: the timing does not change."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               * (6 / m.in_features**0.5))
        for name, p in model.named_parameters():
            if name.endswith("_matrix"):  # OFA's 7to5 / 5to3 kernel transforms start at I
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def ofa_extract(opts, families: list[str], n_archs: int, resolution: int,
                rounds: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from nasbench.bench.supernets import _interleaved_ms
    from supernets.ofa_bridge import from_ofa, to_ofa_arch

    device = torch.device(opts.device)
    builders = _ofa_nets()
    rows = []
    for family in families:
        torch.manual_seed(opts.seed)
        peer = _randomised(builders[family](), opts.seed).to(device).eval()
        net = from_ofa(peer, resolutions=[resolution]).to(device).eval()
        rng = np.random.default_rng([opts.seed, 17])
        for i in range(n_archs):
            arch = net.space.sample(rng)
            ofa_arch = {k: v for k, v in to_ofa_arch(net, arch).items() if k != "r"}
            peer.set_active_subnet(**ofa_arch)
            subnets = {"ours": net.extract(arch).eval(),
                       "ofa": peer.get_active_subnet(preserve_weight=True).to(device).eval()}
            for batch in BATCHES:
                gen = torch.Generator().manual_seed(opts.seed + batch)
                plain = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device)
                for layout in LAYOUTS:
                    x, mods = plain, subnets
                    if layout == "channels_last":
                        x = plain.contiguous(memory_format=torch.channels_last)
                        mods = {k: copy.deepcopy(m).to(memory_format=torch.channels_last)
                                for k, m in subnets.items()}
                    with torch.inference_mode():
                        expected = mods["ofa"](x)
                        diff = (mods["ours"](x) - expected).abs().max().item()
                        scale = expected.abs().max().item()
                    ms = _interleaved_ms(mods, x, rounds, device, ROUND_S)
                    rows.append({
                        "family": family, "arch": f"random{i}",
                        "arch_id": net.space.arch_id(arch), "batch": batch, "layout": layout,
                        "ours_ms": round(ms["ours"], 3), "ofa_ms": round(ms["ofa"], 3),
                        "speedup": round(ms["ofa"] / ms["ours"], 3),
                        "max_abs_diff": float(f"{diff:.3g}"),
                        "output_scale": round(scale, 3),  # max |logit|: what the diff is against
                    })
    best = {}  # per (family, arch, batch): each side in its own faster layout
    for r in rows:
        key = (r["family"], r["arch"], r["batch"])
        ours, ofa = best.get(key, (float("inf"), float("inf")))
        best[key] = (min(ours, r["ours_ms"]), min(ofa, r["ofa_ms"]))
    best_ratios = [ofa / ours for ours, ofa in best.values()]
    return {
        "peer": "ofa get_active_subnet(preserve_weight=True)", "resolution": resolution,
        "rounds": rounds, "families": families,
        "timing": "median over rounds, subnets alternated; eval, inference_mode; "
        + ("process CPU time" if device.type == "cpu" else "wall time"),
        "rows": rows,
        "min_speedup": min(r["speedup"] for r in rows),
        # resnet subnets are OFA's stock layers one for one: expect parity, +-2% is noise
        "min_speedup_by_family": {f: min(r["speedup"] for r in rows if r["family"] == f)
                                  for f in families},
        "min_speedup_best_layout_each": round(min(best_ratios), 3),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "min_output_scale": min(r["output_scale"] for r in rows),
        "ours_never_slower": all(r["speedup"] >= 1.0 for r in rows),
        "goal": "ours never slower than OFA's subnet (speedup >= 1.0)",
    }
