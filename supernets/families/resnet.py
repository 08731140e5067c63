"""`resnet`: an elastic ResNet (basic or bottleneck blocks).

Space: `resolution`, `stage{s}.depth`, `block{i}.expand` (mid width of block i as a fraction
of its output width; blocks numbered across stages from 0).

Module names (MoS targets): `blocks.{i}.conv1`, `blocks.{i}.conv2` (and `blocks.{i}.conv3` for
bottlenecks) are `DynamicConv2d`s; for bottlenecks conv1 and conv3 are the 1x1 convs. The stem,
`blocks.{i}.downsample` and `fc` are fixed stock layers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nasbench_core.errors import UserError
from supernets.base import Supernet, training_layout
from supernets.families._common import active_blocks, choices, count, depth_gates, per_block, preset_kwargs
from supernets.families.mbv3 import _init_weights
from supernets.ops import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    channel_tensor,
    importance_order,
    make_divisible,
    permute_,
)
from supernets.registry import register_supernet
from supernets.space import Arch, SearchSpace
from supernets.stock import Residual

PRESETS: dict[str, dict[str, Any]] = {
    "default": {  # ResNet-50 at the largest arch
        "block": "bottleneck", "stem": "imagenet", "stem_width": 64,
        "widths": [256, 512, 1024, 2048], "strides": [1, 2, 2, 2],
        "depths": [[1, 2, 3], [2, 3, 4], [4, 5, 6], [1, 2, 3]],
        "expands": [0.15, 0.2, 0.25], "resolutions": [128, 160, 192, 224], "divisor": 8,
    },
    "tiny": {
        "block": "basic", "stem": "cifar", "stem_width": 16,
        "widths": [16, 32], "strides": [2, 2], "depths": [[1, 2], [1, 2]],
        "expands": [0.5, 0.75, 1.0], "resolutions": [16, 20, 24, 28, 32], "divisor": 4,
    },
}


class ElasticResBlock(nn.Module):
    """A ResNet block whose inner (mid) width is elastic; input/output widths are fixed."""

    def __init__(self, kind: str, in_ch: int, out_ch: int, stride: int, expands: list[float],
                 divisor: int):
        super().__init__()
        self.kind, self.in_ch, self.out_ch, self.divisor = kind, in_ch, out_ch, divisor
        mid = self.mid_channels(max(expands))
        if kind == "bottleneck":
            self.conv1 = DynamicConv2d(in_ch, mid, 1)
            self.conv2 = DynamicConv2d(mid, mid, 3, stride)
            self.conv3 = DynamicConv2d(mid, out_ch, 1)
            self.bn3 = DynamicBatchNorm2d(out_ch)
        else:
            self.conv1 = DynamicConv2d(in_ch, mid, 3, stride)
            self.conv2 = DynamicConv2d(mid, out_ch, 3)
            self.conv3 = self.bn3 = None
        self.bn1 = DynamicBatchNorm2d(mid)
        self.bn2 = DynamicBatchNorm2d(mid if kind == "bottleneck" else out_ch)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def mid_channels(self, expand: float) -> int:
        return make_divisible(self.out_ch * expand, self.divisor)

    def _layers(self) -> list[nn.Module]:
        layers = [self.conv1, self.bn1, self.conv2, self.bn2]
        return layers + ([self.conv3, self.bn3] if self.conv3 is not None else [])

    def set_active(self, expand: float) -> None:
        mid = self.mid_channels(expand)
        self.conv1.set_active(mid, self.in_ch)
        self.bn1.set_active(mid)
        if self.conv3 is not None:
            self.conv2.set_active(mid, mid)
            self.bn2.set_active(mid)
            self.conv3.set_active(self.out_ch, mid)
        else:
            self.conv2.set_active(self.out_ch, mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.conv3 is not None:
            out = self.bn3(self.conv3(self.act(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(out + shortcut)

    def to_stock(self) -> nn.Module:
        body: list[nn.Module] = []
        layers = self._layers()
        for j in range(0, len(layers), 2):
            if body:
                body.append(nn.ReLU(inplace=True))
            body += [layers[j].to_stock(), layers[j + 1].to_stock()]
        shortcut = nn.Identity() if self.downsample is None else copy.deepcopy(self.downsample)
        return Residual(nn.Sequential(*body), shortcut, nn.ReLU(inplace=True))

    def count(self, expand: float) -> int:
        mid, i, o = self.mid_channels(expand), self.in_ch, self.out_ch
        if self.conv3 is not None:
            n = DynamicConv2d.count(i, mid, 1) + DynamicConv2d.count(mid, mid, 3)
            n += DynamicConv2d.count(mid, o, 1) + 4 * mid + 2 * o
        else:
            n = DynamicConv2d.count(i, mid, 3) + DynamicConv2d.count(mid, o, 3) + 2 * mid + 2 * o
        return n + (count(self.downsample) if self.downsample is not None else 0)

    def reorder_channels(self) -> None:
        """Sort mid channels by the L1 norm of the weights that consume them."""
        if self.conv3 is not None:
            order = importance_order(channel_tensor(self.conv3), 1)
            permute_(self.conv2, order, 0)
            permute_(self.bn2, order, 0)
            permute_(self.conv3, order, 1)
        order = importance_order(channel_tensor(self.conv2), 1)
        permute_(self.conv1, order, 0)
        permute_(self.bn1, order, 0)
        permute_(self.conv2, order, 1)


@register_supernet("resnet")
class ResNetSupernet(Supernet):
    """Elastic ResNet: per-stage depth and per-block mid width, plus input resolution."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0,
                 preset: str = "default", **overrides: Any):
        cfg = preset_kwargs("resnet", PRESETS, preset, overrides)
        if cfg["block"] not in ("basic", "bottleneck"):
            raise UserError(f"unknown resnet block {cfg['block']!r}; known: basic, bottleneck")
        div = cfg["divisor"]
        dims: dict[str, list[Any]] = {"resolution": choices(cfg["resolutions"])}
        self.stage_blocks: list[list[int]] = []
        for s, depths in enumerate(cfg["depths"]):
            depths = choices(depths)
            dims[f"stage{s}.depth"] = depths
            first = sum(len(idx) for idx in self.stage_blocks)
            self.stage_blocks.append(list(range(first, first + depths[-1])))
        # one choice list for every block, or one per block across all stages
        expands = per_block(cfg["expands"], sum(len(idx) for idx in self.stage_blocks))
        for i, es in enumerate(expands):
            dims[f"block{i}.expand"] = es
        gates: dict[str, tuple[str, int]] = {}
        for s, idx in enumerate(self.stage_blocks):
            gates |= depth_gates(f"stage{s}.depth", dims[f"stage{s}.depth"],
                                 [[f"block{i}.expand"] for i in idx])
        super().__init__(SearchSpace(dims, gates), {
            "num_classes": num_classes, "in_chans": in_chans, "width_mult": width_mult,
            "preset": preset, **overrides})

        stem_w = make_divisible(cfg["stem_width"] * width_mult, div)
        if cfg["stem"] == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_w, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_w),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_w, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_w),
                nn.ReLU(inplace=True))
        blocks, in_ch = [], stem_w
        for width, stride, idx in zip(cfg["widths"], cfg["strides"], self.stage_blocks,
                                      strict=True):
            out_ch = make_divisible(width * width_mult, div)
            for j, i in enumerate(idx):
                blocks.append(ElasticResBlock(cfg["block"], in_ch, out_ch, stride if j == 0 else 1,
                                              expands[i], div))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)
        self._run: list[ElasticResBlock] = list(self.blocks)
        self.set_active(self.space.largest())

    def _configure(self, arch: Arch) -> None:
        run = active_blocks(self.stage_blocks, arch)
        for i in run:
            self.blocks[i].set_active(arch[f"block{i}.expand"])
        self._run = [self.blocks[i] for i in run]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(training_layout(x))
        for block in self._run:
            x = block(x)
        return self.fc(self.pool(x))

    def _extract(self) -> nn.Module:
        return nn.Sequential(copy.deepcopy(self.stem), *[b.to_stock() for b in self._run],
                             copy.deepcopy(self.pool), copy.deepcopy(self.fc))

    def count_params(self, arch: Mapping[str, Any]) -> int:
        arch = self.space.validate(arch)
        n = count(self.stem) + count(self.fc)
        return n + sum(self.blocks[i].count(arch[f"block{i}.expand"])
                       for i in active_blocks(self.stage_blocks, arch))
