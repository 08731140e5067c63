"""Train one arch on its own, with the same recipe: the from-scratch baseline for inherited weights.

`PinnedArch` makes a supernet look like a supernet whose space has a single arch, so
`train_supernet(..., sampling="uniform")` trains exactly that subnet, step for step like the
supernet run it is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from supernets.space import SearchSpace
from supernets.training.hparams import TrainHParams
from supernets.training.loop import TrainResult, train_supernet


class PinnedArch(nn.Module):
    """`net` restricted to `arch`: its space has one choice per dimension."""

    def __init__(self, net: nn.Module, arch: Mapping[str, Any]):
        super().__init__()
        self.net = net
        self.arch = net.space.validate(arch)
        self.space = SearchSpace({k: [v] for k, v in self.arch.items()})

    def set_active(self, arch: Mapping[str, Any]) -> None:
        self.net.set_active(arch)

    # The recipe hooks (see supernets.training.regularize) act on the wrapped net.
    @property
    def regularization(self) -> tuple[float, float]:
        return self.net.regularization

    def set_regularization(self, dropout: float, drop_path: float) -> None:
        self.net.set_regularization(dropout, drop_path)

    def residual_branch_ends(self) -> list[nn.Module]:
        return self.net.residual_branch_ends()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_standalone(
    net: nn.Module,
    arch: Mapping[str, Any],
    train_loader: Iterable,
    cfg: TrainHParams,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> TrainResult:
    """Train only `arch` of (a freshly initialised) `net` on labels for `cfg`'s steps."""
    return train_supernet(
        PinnedArch(net, arch), train_loader, None, cfg.replace(sampling="uniform"),
        device=device, arch_sampler_seed=seed,
    )
