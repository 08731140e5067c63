"""Recipe hooks on the network: zero-init of residual branches, per-member dropout/drop-path.

Both go through small family methods: `residual_branch_ends()` names the last layer of each
residual branch, `set_regularization(dropout, drop_path)` sets the rates the training forward
uses (and `regularization` reads them back). A family without them supports neither.
"""

from __future__ import annotations

import torch
from torch import nn

from nasbench_core.errors import ConfigError
from supernets.training.hparams import TrainHParams


def zero_init_residual_(net: nn.Module) -> int:
    """Zero the weight and bias of the last layer of every residual branch (BN gamma and beta in
    CNNs, the last projection in a ViT block), so each residual block starts as its skip path
    (BigNAS, after Goyal et al. 2017). Returns how many layers were zeroed."""
    ends = getattr(net, "residual_branch_ends", None)
    if ends is None:
        raise ConfigError(f"train.zero_init_residual: {type(net).__name__} does not name its "
                          "residual branches (no residual_branch_ends())")
    layers = ends()
    with torch.no_grad():
        for layer in layers:
            for name in ("weight", "bias"):
                param = getattr(layer, name, None)
                if param is not None:
                    param.zero_()
    return len(layers)


class MemberRegularization:
    """Dropout and drop-path per sandwich member: the configured rates for the members that are
    regularized (all, or only the largest arch), zero for the others; `restore` puts back the
    net's own rates when training ends."""

    def __init__(self, net: nn.Module, cfg: TrainHParams):
        self.net = net
        self.setter = getattr(net, "set_regularization", None)
        own = tuple(getattr(net, "regularization", (0.0, 0.0)))
        self.own = own
        self.rates = (own[0] if cfg.dropout is None else cfg.dropout,
                      own[1] if cfg.drop_path is None else cfg.drop_path)
        if self.setter is None and any(self.rates):
            raise ConfigError(f"train.dropout/drop_path: {type(net).__name__} has no "
                              "set_regularization(); leave them unset")
        self.only_largest = cfg.regularize == "largest"
        self.largest = net.space.largest()

    def apply(self, arch: dict) -> None:
        """Set the rates for the member about to run `arch`."""
        if self.setter is None:
            return
        on = not self.only_largest or arch == self.largest
        self.setter(*(self.rates if on else (0.0, 0.0)))

    def restore(self) -> None:
        if self.setter is not None:
            self.setter(*self.own)
