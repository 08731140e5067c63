"""`mbv3`: an elastic MobileNetV3 (Once-for-All layout).

Space: `resolution`, `stage{s}.depth`, `block{i}.kernel`, `block{i}.expand` (blocks numbered
across stages from 0; a stage of depth d runs its first d blocks).

Module names (MoS targets): `blocks.{i}.expand` and `blocks.{i}.project` are the 1x1
`DynamicConv2d`s of elastic block i; `blocks.{i}.dw` is its depthwise conv and
`blocks.{i}.se.reduce/expand` its squeeze-excite convs. The stem, first block, `final`
and `head` are fixed stock layers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from supernets.base import Supernet, training_layout
from supernets.families._common import (
    Regularization,
    activation,
    active_blocks,
    choices,
    count,
    depth_gates,
    drop_path,
    nonzero_options,
    per_block,
    preset_kwargs,
)
from supernets.ops import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicSqueezeExcite,
    channel_tensor,
    importance_order,
    make_divisible,
    permute_,
)
from supernets.registry import register_supernet
from supernets.space import Arch, SearchSpace
from supernets.stock import Residual, SqueezeExcite

_OFA_STAGES = [  # width, stride, activation, squeeze-excite (OFA MobileNetV3-Large)
    (24, 2, "relu", False),
    (40, 2, "relu", True),
    (80, 2, "hswish", False),
    (112, 1, "hswish", True),
    (160, 2, "hswish", True),
]
_TINY_STAGES = [(16, 2, "relu", False), (24, 2, "hswish", True), (32, 1, "hswish", True)]


def _stages(table, depths, kernels, expands) -> list[dict[str, Any]]:
    return [
        {"width": w, "stride": s, "act": a, "se": se, "depths": list(depths),
         "kernels": list(kernels), "expands": list(expands)}
        for w, s, a, se in table
    ]


PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "stem_width": 16, "stem_stride": 2, "stem_act": "hswish",
        "first_block": {"width": 16, "stride": 1, "kernel": 3, "act": "relu", "se": False},
        "stages": _stages(_OFA_STAGES, (2, 3, 4), (3, 5, 7), (3, 4, 6)),
        "final_width": 960, "head_width": 1280, "head_bias": False,
        "resolutions": [128, 160, 192, 224], "divisor": 8, "transform_kernel": True,
    },
    "tiny": {
        "stem_width": 8, "stem_stride": 2, "stem_act": "hswish",
        "first_block": {"width": 8, "stride": 1, "kernel": 3, "act": "relu", "se": False},
        "stages": _stages(_TINY_STAGES, (1, 2), (3, 5, 7), (3, 4, 6)),
        "final_width": 64, "head_width": 96, "head_bias": False,
        "resolutions": [16, 20, 24, 28, 32], "divisor": 8, "transform_kernel": True,
    },
}


class ElasticMBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise, optional SE, 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernels: list[int],
                 expands: list[float], act: str, se: bool, divisor: int, transform_kernel: bool):
        super().__init__()
        self.in_ch, self.out_ch, self.divisor = in_ch, out_ch, divisor
        mid = self.mid_channels(max(expands))
        self.expand = DynamicConv2d(in_ch, mid, 1)
        self.expand_bn = DynamicBatchNorm2d(mid)
        self.dw = DynamicConv2d(mid, mid, kernels, stride, depthwise=True,
                                transform_kernel=transform_kernel)
        self.dw_bn = DynamicBatchNorm2d(mid)
        self.act = activation(act)
        self.se = DynamicSqueezeExcite(mid, divisor=divisor) if se else None
        self.project = DynamicConv2d(mid, out_ch, 1)
        self.project_bn = DynamicBatchNorm2d(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path_rate = 0.0

    def mid_channels(self, expand: float) -> int:
        return make_divisible(self.in_ch * expand, self.divisor)

    def set_active(self, kernel: int, expand: float) -> None:
        mid = self.mid_channels(expand)
        self.expand.set_active(mid, self.in_ch)
        self.expand_bn.set_active(mid)
        self.dw.set_active(mid, kernel=kernel)
        self.dw_bn.set_active(mid)
        if self.se is not None:
            self.se.set_active(mid)
        self.project.set_active(self.out_ch, mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.expand_bn(self.expand(x)))
        out = self.act(self.dw_bn(self.dw(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.project_bn(self.project(out))
        return drop_path(out, self.drop_path_rate, self.training) + x if self.residual else out

    def to_stock(self) -> nn.Module:
        body = [self.expand.to_stock(), self.expand_bn.to_stock(), activation_copy(self.act),
                self.dw.to_stock(), self.dw_bn.to_stock(), activation_copy(self.act)]
        if self.se is not None:
            body.append(self.se.to_stock())
        body += [self.project.to_stock(), self.project_bn.to_stock()]
        return Residual(nn.Sequential(*body), nn.Identity() if self.residual else None)

    def count(self, kernel: int, expand: float) -> int:
        mid = self.mid_channels(expand)
        n = DynamicConv2d.count(self.in_ch, mid, 1) + 2 * mid
        n += DynamicConv2d.count(mid, mid, kernel, depthwise=True) + 2 * mid
        n += self.se.count(mid) if self.se is not None else 0
        return n + DynamicConv2d.count(mid, self.out_ch, 1) + 2 * self.out_ch

    def reorder_channels(self) -> None:
        """Sort the expanded channels by the L1 norm of their projection weights."""
        order = importance_order(channel_tensor(self.project), 1)
        for layer in (self.expand, self.expand_bn, self.dw, self.dw_bn):
            permute_(layer, order, 0)
        permute_(self.project, order, 1)
        if self.se is not None:
            permute_(self.se.reduce, order, 1)
            permute_(self.se.expand, order, 0)
            rd_order = importance_order(channel_tensor(self.se.expand), 1)
            permute_(self.se.reduce, rd_order, 0)
            permute_(self.se.expand, rd_order, 1)


def activation_copy(act: nn.Module) -> nn.Module:
    """The extracted subnet's activation: in place (each follows a BatchNorm, whose output
    nothing else reads), as torchvision's MobileNetV3 does; saves an allocation per layer."""
    return type(act)(inplace=True)


def _fixed_block(in_ch: int, spec: dict[str, Any], divisor: int, width_mult: float) -> Residual:
    """The first, non-elastic block: depthwise k x k, optional SE, 1x1 project."""
    out_ch = make_divisible(spec["width"] * width_mult, divisor)
    k, stride = spec["kernel"], spec["stride"]
    body: list[nn.Module] = [
        nn.Conv2d(in_ch, in_ch, k, stride, k // 2, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch), activation(spec["act"]),
    ]
    if spec["se"]:
        rd = make_divisible(in_ch * 0.25, divisor)
        body.append(SqueezeExcite(nn.Conv2d(in_ch, rd, 1), nn.Conv2d(rd, in_ch, 1)))
    body += [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
    residual = stride == 1 and in_ch == out_ch
    return Residual(nn.Sequential(*body), nn.Identity() if residual else None)


@register_supernet("mbv3")
class MobileNetV3Supernet(Regularization, Supernet):
    """Elastic MobileNetV3: per-block kernel and expand ratio, per-stage depth, resolution.

    `dropout` (before the classifier) and `drop_path` (on the residual branches of the elastic
    blocks) are training-only regularizers, off by default."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0,
                 preset: str = "default", dropout: float = 0.0, drop_path: float = 0.0,
                 **overrides: Any):
        cfg = preset_kwargs("mbv3", PRESETS, preset, overrides)
        div = cfg["divisor"]

        def w(c: int) -> int:
            return make_divisible(c * width_mult, div)

        dims: dict[str, list[Any]] = {"resolution": choices(cfg["resolutions"])}
        block_choices: list[tuple[list[int], list[float]]] = []
        self.stage_blocks: list[list[int]] = []
        for s, st in enumerate(cfg["stages"]):
            depths = choices(st["depths"])
            dims[f"stage{s}.depth"] = depths
            n = depths[-1]
            ks, es = per_block(st["kernels"], n), per_block(st["expands"], n)
            first = len(block_choices)
            self.stage_blocks.append(list(range(first, first + n)))
            block_choices += list(zip(ks, es, strict=True))
        for i, (ks, es) in enumerate(block_choices):
            dims[f"block{i}.kernel"] = ks
            dims[f"block{i}.expand"] = es
        gates: dict[str, tuple[str, int]] = {}
        for s, idx in enumerate(self.stage_blocks):
            gates |= depth_gates(f"stage{s}.depth", dims[f"stage{s}.depth"],
                                 [[f"block{i}.kernel", f"block{i}.expand"] for i in idx])
        super().__init__(SearchSpace(dims, gates), {
            "num_classes": num_classes, "in_chans": in_chans, "width_mult": width_mult,
            "preset": preset, **nonzero_options(dropout=dropout, drop_path=drop_path),
            **overrides})

        stem_w = w(cfg["stem_width"])
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_w, 3, cfg["stem_stride"], 1, bias=False),
            nn.BatchNorm2d(stem_w), activation(cfg["stem_act"]),
        )
        self.first = _fixed_block(stem_w, cfg["first_block"], div, width_mult)
        in_ch = make_divisible(cfg["first_block"]["width"] * width_mult, div)
        blocks = []
        for st, idx in zip(cfg["stages"], self.stage_blocks, strict=True):
            out_ch = w(st["width"])
            for j, i in enumerate(idx):
                ks, es = block_choices[i]
                blocks.append(ElasticMBConv(in_ch, out_ch, st["stride"] if j == 0 else 1, ks, es,
                                            st["act"], st["se"], div, cfg["transform_kernel"]))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        final_w = w(cfg["final_width"])
        head_w = max(cfg["head_width"], w(cfg["head_width"]))
        self.final = nn.Sequential(nn.Conv2d(in_ch, final_w, 1, bias=False),
                                   nn.BatchNorm2d(final_w), nn.Hardswish())
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(final_w, head_w, 1, bias=cfg["head_bias"]),
            nn.Hardswish(), nn.Flatten(1), nn.Linear(head_w, num_classes),
        )
        _init_weights(self)
        self.set_regularization(dropout, drop_path)
        self._run: list[ElasticMBConv] = list(self.blocks)
        self.set_active(self.space.largest())

    def _configure(self, arch: Arch) -> None:
        run = active_blocks(self.stage_blocks, arch)
        for i in run:
            self.blocks[i].set_active(arch[f"block{i}.kernel"], arch[f"block{i}.expand"])
        self._run = [self.blocks[i] for i in run]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(training_layout(x)))
        for block in self._run:
            x = block(x)
        *features, classifier = self.head
        x = self.final(x)
        for layer in features:
            x = layer(x)
        return classifier(self.classifier_dropout(x))

    def residual_branch_ends(self) -> list[nn.Module]:
        """The last BN of every block with a skip connection (for zero-init)."""
        first = [self.first.body[-1]] if self.first.shortcut is not None else []
        return first + [b.project_bn for b in self.blocks if b.residual]

    def _drop_path_blocks(self) -> list[nn.Module]:
        return [b for b in self.blocks if b.residual]

    def _extract(self) -> nn.Module:
        return nn.Sequential(
            copy.deepcopy(self.stem), copy.deepcopy(self.first),
            *[b.to_stock() for b in self._run],
            copy.deepcopy(self.final), copy.deepcopy(self.head),
        )

    def count_params(self, arch: Mapping[str, Any]) -> int:
        arch = self.space.validate(arch)
        n = sum(count(m) for m in (self.stem, self.first, self.final, self.head))
        return n + sum(self.blocks[i].count(arch[f"block{i}.kernel"], arch[f"block{i}.expand"])
                       for i in active_blocks(self.stage_blocks, arch))


def _init_weights(net: nn.Module) -> None:
    """He init for convs, unit BN, small normal classifier (as MobileNet recipes do)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, DynamicConv2d)):
            # fan_out of a depthwise conv counts only its own channel (k*k), not all groups
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel() // _groups(m)
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _groups(conv: nn.Module) -> int:
    if isinstance(conv, DynamicConv2d):
        return conv.out_channels if conv.depthwise else 1
    return conv.groups
