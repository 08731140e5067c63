"""`resnet`: an elastic ResNet (basic or bottleneck blocks).

Space: `resolution`, `stage{s}.depth`, `block{i}.expand` (mid width of block i as a fraction
of its output width; blocks numbered across stages from 0). With several `width_mults` (preset
`ofa50`, OFA's ResNet-50 space) a stage's output width is elastic too: `stage{s}.width`, and the
stem's `stem.width` / `stem.mid_width`, each a multiplier of the largest width. The `deep` stem
is OFA's: 3x3/2 conv, a residual 3x3 conv that `stem.depth: 2` skips, 3x3 conv, 3x3/2 max-pool.
`downsample: avgpool` averages before the 1x1 shortcut conv instead of striding it (OFA's
`avgpool_conv`), so the shortcut sees every input pixel.

Module names (MoS targets): `blocks.{i}.conv1`, `blocks.{i}.conv2` (and `blocks.{i}.conv3` for
bottlenecks) are `DynamicConv2d`s; for bottlenecks conv1 and conv3 are the 1x1 convs. The stem,
`blocks.{i}.downsample` and `fc` are fixed stock layers unless widths are elastic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nasbench_core.errors import UserError
from supernets.base import Supernet, training_layout
from supernets.families._common import (
    Regularization,
    choices,
    count,
    depth_gates,
    drop_path,
    nonzero_options,
    per_block,
    preset_kwargs,
)
from supernets.families.mbv3 import _init_weights
from supernets.ops import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicLinear,
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
        "width_mults": [1.0], "downsample": "conv",
    },
    "tiny": {
        "block": "basic", "stem": "cifar", "stem_width": 16,
        "widths": [16, 32], "strides": [2, 2], "depths": [[1, 2], [1, 2]],
        "expands": [0.5, 0.75, 1.0], "resolutions": [16, 20, 24, 28, 32], "divisor": 4,
        "width_mults": [1.0], "downsample": "conv",
    },
    "ofa50": {  # Once-for-All's OFAResNets (ResNet-50 space): 6.5M-48.1M params at 1000 classes
        "block": "bottleneck", "stem": "deep", "stem_width": 64,
        "widths": [256, 512, 1024, 2048], "strides": [1, 2, 2, 2],
        "depths": [[2, 3, 4], [2, 3, 4], [4, 5, 6], [2, 3, 4]],
        "expands": [0.2, 0.25, 0.35], "resolutions": [128, 160, 192, 224], "divisor": 8,
        "width_mults": [0.65, 0.8, 1.0], "downsample": "avgpool",
    },
}


class ElasticResBlock(nn.Module):
    """A ResNet block whose inner (mid) width is elastic; input/output widths are fixed."""

    def __init__(self, kind: str, in_ch: int, out_ch: int, stride: int, expands: list[float],
                 divisor: int, *, elastic_io: bool = False, downsample: str = "conv"):
        super().__init__()
        self.kind, self.in_ch, self.out_ch, self.divisor = kind, in_ch, out_ch, divisor
        self.active_in, self.active_out = in_ch, out_ch
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
        self.drop_path_rate = 0.0
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = _shortcut(in_ch, out_ch, stride, elastic_io, downsample)

    def mid_channels(self, expand: float, out_ch: int | None = None) -> int:
        return make_divisible((out_ch or self.out_ch) * expand, self.divisor)

    def _layers(self) -> list[nn.Module]:
        layers = [self.conv1, self.bn1, self.conv2, self.bn2]
        return layers + ([self.conv3, self.bn3] if self.conv3 is not None else [])

    def set_active(self, expand: float, in_ch: int | None = None, out_ch: int | None = None
                   ) -> None:
        """The mid width for `expand` of the active output width; in/out widths are elastic
        only in a block built with `elastic_io` (else they stay at the built widths)."""
        i, o = in_ch or self.in_ch, out_ch or self.out_ch
        self.__dict__.update(active_in=i, active_out=o)  # see DynamicConv2d.set_active
        mid = self.mid_channels(expand, o)
        self.conv1.set_active(mid, i)
        self.bn1.set_active(mid)
        if self.conv3 is not None:
            self.conv2.set_active(mid, mid)
            self.bn2.set_active(mid)
            self.conv3.set_active(o, mid)
            self.bn3.set_active(o)
        else:
            self.conv2.set_active(o, mid)
            self.bn2.set_active(o)
        if self.downsample is not None:
            for layer in self.downsample:
                if isinstance(layer, DynamicConv2d):
                    layer.set_active(o, i)
                elif isinstance(layer, DynamicBatchNorm2d):
                    layer.set_active(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.conv3 is not None:
            out = self.bn3(self.conv3(self.act(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(drop_path(out, self.drop_path_rate, self.training) + shortcut)

    def to_stock(self) -> nn.Module:
        body: list[nn.Module] = []
        layers = self._layers()
        for j in range(0, len(layers), 2):
            if body:
                body.append(nn.ReLU(inplace=True))
            body += [layers[j].to_stock(), layers[j + 1].to_stock()]
        return Residual(nn.Sequential(*body), _stock(self.downsample), nn.ReLU(inplace=True))

    def count(self, expand: float, in_ch: int | None = None, out_ch: int | None = None) -> int:
        i, o = in_ch or self.in_ch, out_ch or self.out_ch
        mid = self.mid_channels(expand, o)
        if self.conv3 is not None:
            n = DynamicConv2d.count(i, mid, 1) + DynamicConv2d.count(mid, mid, 3)
            n += DynamicConv2d.count(mid, o, 1) + 4 * mid + 2 * o
        else:
            n = DynamicConv2d.count(i, mid, 3) + DynamicConv2d.count(mid, o, 3) + 2 * mid + 2 * o
        if self.downsample is None:
            return n
        elastic = any(isinstance(m, DynamicConv2d) for m in self.downsample)
        return n + (DynamicConv2d.count(i, o, 1) + 2 * o if elastic else count(self.downsample))

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


def _shortcut(in_ch: int, out_ch: int, stride: int, elastic: bool, mode: str) -> nn.Sequential:
    """The projection shortcut: a strided 1x1 conv + BN (`conv`), or OFA's `avgpool_conv`
    (average `stride` x `stride` pixels, then a 1x1 conv + BN); elastic ops when widths are."""
    if mode not in ("conv", "avgpool"):
        raise UserError(f"unknown resnet downsample {mode!r}; known: avgpool, conv")
    conv_stride = 1 if mode == "avgpool" else stride
    if elastic:
        layers: list[nn.Module] = [DynamicConv2d(in_ch, out_ch, 1, conv_stride),
                                   DynamicBatchNorm2d(out_ch)]
    else:
        layers = [nn.Conv2d(in_ch, out_ch, 1, conv_stride, bias=False), nn.BatchNorm2d(out_ch)]
    if mode == "avgpool":  # an Identity at stride 1 keeps the conv at index 1 in every block
        layers.insert(0, nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1
                      else nn.Identity())
    return nn.Sequential(*layers)


def _stock(module: nn.Module | None) -> nn.Module:
    """Stock layers for the active widths of a (possibly elastic) sequence of layers."""
    if module is None:
        return nn.Identity()
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*[_stock(m) for m in module])
    return module.to_stock() if hasattr(module, "to_stock") else copy.deepcopy(module)


class DeepStem(nn.Module):
    """OFA's ResNet input stem with elastic widths: 3x3/2 conv to `mid`, a residual 3x3 conv
    (skipped at depth 2), 3x3 conv to the stem width, each with BN + ReLU; then 3x3/2 max-pool."""

    def __init__(self, in_chans: int, mid: int, out: int):
        super().__init__()
        self.in_chans = in_chans
        self.conv1, self.bn1 = DynamicConv2d(in_chans, mid, 3, 2), DynamicBatchNorm2d(mid)
        self.conv2, self.bn2 = DynamicConv2d(mid, mid, 3), DynamicBatchNorm2d(mid)
        self.conv3, self.bn3 = DynamicConv2d(mid, out, 3), DynamicBatchNorm2d(out)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.skip_middle = False

    def set_active(self, mid: int, out: int, depth: int) -> None:
        self.conv1.set_active(mid, self.in_chans)
        self.bn1.set_active(mid)
        self.conv2.set_active(mid, mid)
        self.bn2.set_active(mid)
        self.conv3.set_active(out, mid)
        self.bn3.set_active(out)
        self.__dict__["skip_middle"] = depth < 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if not self.skip_middle:
            x = x + self.act(self.bn2(self.conv2(x)))
        return self.pool(self.act(self.bn3(self.conv3(x))))

    def to_stock(self) -> nn.Module:
        layers: list[nn.Module] = [self.conv1.to_stock(), self.bn1.to_stock(), nn.ReLU(inplace=True)]
        if not self.skip_middle:
            middle = nn.Sequential(self.conv2.to_stock(), self.bn2.to_stock(), nn.ReLU())
            layers.append(Residual(middle, nn.Identity()))
        layers += [self.conv3.to_stock(), self.bn3.to_stock(), nn.ReLU(inplace=True),
                   copy.deepcopy(self.pool)]
        return nn.Sequential(*layers)

    def count(self, mid: int, out: int, depth: int) -> int:
        n = DynamicConv2d.count(self.in_chans, mid, 3) + DynamicConv2d.count(mid, out, 3)
        n += 2 * mid + 2 * out
        return n + (DynamicConv2d.count(mid, mid, 3) + 2 * mid if depth >= 3 else 0)


@register_supernet("resnet")
class ResNetSupernet(Regularization, Supernet):
    """Elastic ResNet: per-stage depth and per-block mid width, plus input resolution; with
    several `width_mults`, also per-stage output width and (deep stem) the stem's widths and
    depth. `dropout` (before `fc`) and `drop_path` (on every block's residual branch) are
    training-only regularizers, off by default."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0,
                 preset: str = "default", dropout: float = 0.0, drop_path: float = 0.0,
                 **overrides: Any):
        cfg = preset_kwargs("resnet", PRESETS, preset, overrides)
        if cfg["block"] not in ("basic", "bottleneck"):
            raise UserError(f"unknown resnet block {cfg['block']!r}; known: basic, bottleneck")
        if cfg["stem"] not in ("imagenet", "cifar", "deep"):
            raise UserError(f"unknown resnet stem {cfg['stem']!r}; known: cifar, deep, imagenet")
        div = cfg["divisor"]
        mults = choices(cfg["width_mults"])
        self.elastic_width = len(mults) > 1
        if self.elastic_width and cfg["stem"] != "deep":
            raise UserError("resnet width_mults with more than one choice need stem: deep")
        deep = cfg["stem"] == "deep"

        def widths(base: int) -> dict[float, int]:
            return {m: make_divisible(base * width_mult * m, div) for m in mults}

        self.stem_widths = widths(cfg["stem_width"])
        self.stem_mids = {m: make_divisible(c // 2, div) for m, c in self.stem_widths.items()}
        self.stage_widths = [widths(w) for w in cfg["widths"]]
        dims: dict[str, list[Any]] = {"resolution": choices(cfg["resolutions"])}
        if deep:
            dims["stem.depth"] = [2, 3]
        if self.elastic_width:
            dims["stem.mid_width"] = mults
            dims["stem.width"] = mults
        self.stage_blocks: list[list[int]] = []
        for s, depths in enumerate(cfg["depths"]):
            depths = choices(depths)
            dims[f"stage{s}.depth"] = depths
            if self.elastic_width:
                dims[f"stage{s}.width"] = mults
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
            "preset": preset, **nonzero_options(dropout=dropout, drop_path=drop_path),
            **overrides})

        stem_w = self.stem_widths[mults[-1]]
        if deep:
            self.stem = DeepStem(in_chans, self.stem_mids[mults[-1]], stem_w)
        elif cfg["stem"] == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_w, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_w),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_w, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_w),
                nn.ReLU(inplace=True))
        blocks, in_ch = [], stem_w
        for stage_w, stride, idx in zip(self.stage_widths, cfg["strides"], self.stage_blocks,
                                        strict=True):
            out_ch = stage_w[mults[-1]]
            for j, i in enumerate(idx):
                blocks.append(ElasticResBlock(
                    cfg["block"], in_ch, out_ch, stride if j == 0 else 1, expands[i], div,
                    elastic_io=self.elastic_width, downsample=cfg["downsample"]))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = (DynamicLinear if self.elastic_width else nn.Linear)(in_ch, num_classes)
        _init_weights(self)
        self.set_regularization(dropout, drop_path)
        self._run: list[ElasticResBlock] = list(self.blocks)
        self.set_active(self.space.largest())

    def _widths(self, arch: Arch) -> tuple[int, int, list[tuple[int, int, int]]]:
        """Stem mid and output widths, and (block, in, out) for each block the arch runs."""
        def pick(table: dict[float, int], dim: str) -> int:
            return table[arch[dim]] if self.elastic_width else next(reversed(table.values()))

        mid, stem_w = pick(self.stem_mids, "stem.mid_width"), pick(self.stem_widths, "stem.width")
        run, in_ch = [], stem_w
        for s, idx in enumerate(self.stage_blocks):
            out = pick(self.stage_widths[s], f"stage{s}.width")
            for i in idx[: arch[f"stage{s}.depth"]]:
                run.append((i, in_ch, out))
                in_ch = out
        return mid, stem_w, run

    def _configure(self, arch: Arch) -> None:
        mid, stem_w, run = self._widths(arch)
        if isinstance(self.stem, DeepStem):
            self.stem.set_active(mid, stem_w, arch["stem.depth"])
        for i, in_ch, out_ch in run:
            self.blocks[i].set_active(arch[f"block{i}.expand"], in_ch, out_ch)
        if isinstance(self.fc, DynamicLinear):
            self.fc.set_active(self.fc.out_features, run[-1][2])
        self._run = [self.blocks[i] for i, _, _ in run]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(training_layout(x))
        for block in self._run:
            x = block(x)
        return self.fc(self.classifier_dropout(self.pool(x)))

    def residual_branch_ends(self) -> list[nn.Module]:
        """The last BN of every block's residual branch, and of the deep stem's middle conv."""
        stem = [self.stem.bn2] if isinstance(self.stem, DeepStem) else []
        return stem + [b.bn3 if b.bn3 is not None else b.bn2 for b in self.blocks]

    def _drop_path_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def _extract(self) -> nn.Module:
        return nn.Sequential(_stock(self.stem), *[b.to_stock() for b in self._run],
                             copy.deepcopy(self.pool), _stock(self.fc))

    def count_params(self, arch: Mapping[str, Any]) -> int:
        arch = self.space.validate(arch)
        mid, stem_w, run = self._widths(arch)
        deep = isinstance(self.stem, DeepStem)
        n = self.stem.count(mid, stem_w, arch["stem.depth"]) if deep else count(self.stem)
        n += DynamicLinear.count(run[-1][2], self.fc.out_features)
        return n + sum(self.blocks[i].count(arch[f"block{i}.expand"], in_ch, out_ch)
                       for i, in_ch, out_ch in run)
