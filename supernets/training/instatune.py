"""InstaTune-style elastic fine-tuning (Sridhar et al. 2023): the pretrained model teaches.

A supernet built around a pretrained model (`from_timm`, `from_ofa`) starts as that model at its
largest arch. `train.distill_from_initial` keeps a frozen copy of it as it was when training
started and uses its logits as the distillation targets of the other members, so the subnets
learn from the original model rather than from a largest child that drifts while fine-tuning.
The copy is taken before a checkpoint is loaded: a resumed run rebuilds the supernet from the
same pretrained source, so its teacher is the same original model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from supernets.base import prepare_input


class InitialTeacher(nn.Module):
    """A frozen copy of `net` at its largest arch; maps a batch to logits (a `teacher`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.arch = net.space.largest()
        self.net.set_active(self.arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(prepare_input(x, self.arch))
