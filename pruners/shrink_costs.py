"""What a channel allocation removes: the parameters (or MACs) of a shrunk model, exactly.

Removing channels of coupled group g shrinks one dimension of every coupled module: the output
rows of the convs/Linears that produce the channels (and their bias, the BN/LayerNorm scale and
shift), and the input columns of the consumers. A weight [O, I, k...] whose O belongs to group a
and I to group b keeps (O - r_a·x_a)(I - r_b·x_b)·k weights when a loses x_a channels and b
loses x_b (r: channels per root channel, e.g. the spatial size of a flatten; an input made of
several groups by a concat subtracts each). So the kept count is a quadratic in the removed
counts x, not a sum of per-channel costs: at 50% of ResNet-18's channels the dense per-channel
costs add up to ~2x what is really removed, since a weight between two pruned groups is
counted by both.

`CostModel` holds that quadratic for parameters or for MACs (a conv's weight times its output
positions, from `torch.utils.flop_counter` via `pruners.layer_dp.layer_macs`; BN counts no
MACs, as the counter says). `marginal(x)` is what removing one more channel of each group
really removes; `prices(x)` the per-channel costs whose sum over x is exactly `removed(x)`
(the gradient at x/2, exact for a quadratic with removed(0) = 0), which linearises the budget
for the additive DP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from pruners.errors import PruneError
from pruners.layer_dp import layer_macs
from pruners.structured import ChannelGroup, ChannelPlan

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


@dataclass
class CostModel:
    """kept(x) = const + Σ_t c_t·(n_out_t - R_out_t·x)·(n_in_t - R_in_t·x), x = channels removed
    per group; a one-dimensional term (a bias, a BN scale) has n_in = 1 and R_in = 0."""

    c: np.ndarray  # [T]
    n_out: np.ndarray  # [T]
    r_out: np.ndarray  # [T, G]
    n_in: np.ndarray  # [T]
    r_in: np.ndarray  # [T, G]
    channels: np.ndarray  # [G]

    def kept(self, x: Sequence[float] | np.ndarray) -> float:
        """Counted units (params or MACs) the coupled modules keep: exact for integer x."""
        x = np.asarray(x, np.float64)
        return float((self.c * (self.n_out - self.r_out @ x) * (self.n_in - self.r_in @ x)).sum())

    def removed(self, x: Sequence[float] | np.ndarray) -> int:
        return round(self.kept(np.zeros(len(self.channels))) - self.kept(x))

    @property
    def prunable(self) -> int:
        """What removing every channel of every group would remove (`amount` is a fraction of it)."""
        return self.removed(self.channels)

    def marginal(self, x: Sequence[int] | np.ndarray) -> np.ndarray:
        """[G] what one more removed channel of each group removes, given x already removed."""
        x = np.asarray(x, np.int64)
        base = self.removed(x)
        return np.asarray([self.removed(x + np.eye(len(x), dtype=np.int64)[g]) - base
                           for g in range(len(x))], np.int64)

    def prices(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        """[G] gradient of removed() at x/2: Σ_g prices_g·x_g == removed(x) exactly."""
        y = np.asarray(x, np.float64) / 2
        f_out, f_in = self.n_out - self.r_out @ y, self.n_in - self.r_in @ y
        return self.r_out.T @ (self.c * f_in) + self.r_in.T @ (self.c * f_out)


def _per_root(group: ChannelGroup, per_root: dict[int, list[int]], name: str) -> int:
    """Module channels per root channel; the same for every root (else no linear factor)."""
    counts = {len(set(v)) for v in per_root.values()}
    if len(counts) != 1 or len(per_root) != group.channels:
        raise PruneError(f"budget=params/macs: group {group.root!r} maps its channels unevenly onto "
                         f"{name!r}; use budget=channels")
    return counts.pop()


def _terms(module: nn.Module, name: str) -> list[tuple[int, bool, str]]:
    """(multiplier, two-dimensional?, parameter) per parameter of `module` a group can shrink:
    a weight [O, I, k...] is O·I·k (a depthwise conv's O·k), a bias or norm scale O."""
    out: list[tuple[int, bool, str]] = []
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        k = math.prod(getattr(module, "kernel_size", ()) or (1,))
        depthwise = getattr(module, "groups", 1) > 1
        out.append((k, not depthwise, "weight"))
    elif isinstance(module, _NORMS):
        if getattr(module, "weight", None) is not None:
            out.append((module.weight.numel() // module.weight.shape[-1 if isinstance(module, nn.LayerNorm) else 0],
                        False, "weight"))
    elif any(True for _ in module.parameters(recurse=False)):
        raise PruneError(f"budget=params/macs: cannot count the parameters of {name!r} "
                         f"({type(module).__name__}); use budget=channels")
    if getattr(module, "bias", None) is not None:
        out.append((out[-1][0] if isinstance(module, _NORMS) else 1, False, "bias"))
    return out


def _sizes(module: nn.Module) -> tuple[int, int]:
    """(out, in) channels as the factors count them (a transposed conv's weight is [I, O, k])."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], 1
    return module.num_features, 1


def cost_model(model: nn.Module, groups: Sequence[ChannelGroup], budget: str,
               example_input: torch.Tensor | None = None) -> CostModel:
    """The parameters (`budget="params"`) or MACs per sample (`"macs"`, one forward of
    `example_input` under the flop counter) the groups' coupled modules keep, as a quadratic."""
    modules = dict(model.named_modules())
    G = len(groups)
    rows: dict[str, dict[str, np.ndarray]] = {}
    for gi, g in enumerate(groups):
        for side, touched in (("out", g.outputs), ("in", g.inputs)):
            for name, per_root in touched.items():
                r = rows.setdefault(name, {"out": np.zeros(G), "in": np.zeros(G)})
                r[side][gi] += _per_root(g, per_root, name)
    names = sorted(rows)
    macs_per_weight: dict[str, int] = {}
    if budget == "macs":
        if example_input is None:
            raise PruneError("budget=macs needs an example_input")
        weighted = [n for n in names if isinstance(modules[n], (nn.modules.conv._ConvNd, nn.Linear))]
        dense = layer_macs(model, [SimpleNamespace(module_name=n) for n in weighted], example_input)
        macs_per_weight = {n: m // modules[n].weight.numel() for n, m in zip(weighted, dense, strict=True)}
        if not any(macs_per_weight.values()):
            raise PruneError("budget=macs: torch.utils.flop_counter counts no MACs in the prunable "
                             "layers; use budget=params")
    c, n_out, r_out, n_in, r_in = [], [], [], [], []
    for name in names:
        module = modules[name]
        terms = _terms(module, name)
        o, i = _sizes(module) if terms else (0, 0)
        for mult, two_d, param in terms:
            if budget == "macs":
                if param != "weight" or name not in macs_per_weight:
                    continue
                mult *= macs_per_weight[name]
            c.append(mult)
            n_out.append(o)
            r_out.append(rows[name]["out"])
            n_in.append(i if two_d else 1)
            r_in.append(rows[name]["in"] if two_d else np.zeros(G))
    shape = (len(c), G)
    return CostModel(np.asarray(c, np.float64), np.asarray(n_out, np.float64),
                     np.asarray(r_out, np.float64).reshape(shape), np.asarray(n_in, np.float64),
                     np.asarray(r_in, np.float64).reshape(shape),
                     np.asarray([g.channels for g in groups], np.int64))


def removed_fraction(model: nn.Module, plan: ChannelPlan, budget: str,
                     example_input: torch.Tensor | None = None) -> float:
    """The fraction of the prunable params (or MACs) `plan` removes from `model` (unshrunk):
    the `amount` that makes `layer_dp` with that budget remove the same (never less)."""
    costs = cost_model(model, plan.groups, budget, example_input)
    return costs.removed([len(r) for r in plan.removed]) / costs.prunable


__all__ = ["CostModel", "cost_model", "removed_fraction"]
