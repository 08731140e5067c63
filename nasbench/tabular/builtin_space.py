"""The built-in benchmark's space: small two-stage CNNs for 16x16 grayscale digits.

216 archs: small enough to train every one on a CPU in minutes, varied enough that accuracy,
MACs and latency disagree about which archs are best.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from supernets.space import SearchSpace

SPACE = SearchSpace({
    "stem_width": [8, 16, 24],
    "stage1.depth": [1, 2, 3],
    "stage1.kernel": [3, 5],
    "stage2.depth": [1, 2, 3],
    "stage2.kernel": [3, 5],
    "stage2.width_mult": [1, 2],
})


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build_model(arch: Mapping[str, Any], in_chans: int = 1, num_classes: int = 10) -> nn.Sequential:
    """A stock-PyTorch CNN for `arch`: stem, stage 1 at full size, stage 2 at half size, head."""
    arch = SPACE.validate(arch)
    width = int(arch["stem_width"])
    wide = 2 * width * int(arch["stage2.width_mult"])
    layers = _conv_bn_relu(in_chans, width, 3)
    for _ in range(int(arch["stage1.depth"])):
        layers += _conv_bn_relu(width, width, int(arch["stage1.kernel"]))
    layers += _conv_bn_relu(width, wide, int(arch["stage2.kernel"]), stride=2)
    for _ in range(int(arch["stage2.depth"]) - 1):
        layers += _conv_bn_relu(wide, wide, int(arch["stage2.kernel"]))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(wide, num_classes)]
    return nn.Sequential(*layers)
