"""Helpers shared by the supernet families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasbench_core.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "hswish": nn.Hardswish,
    "gelu": nn.GELU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def preset_kwargs(family: str, presets: dict[str, dict[str, Any]], preset: str,
                  overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's settings updated by explicit keyword overrides (which must be known)."""
    if preset not in presets:
        raise UserError(f"unknown {family} preset {preset!r}; known: {sorted(presets)}")
    base = dict(presets[preset])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise UserError(f"unknown {family} option {unknown[0]!r}; known: {sorted(base)}")
    for key, value in overrides.items():
        check_option(f"{family} option {key!r}", value, base[key])
    base.update(overrides)
    return base


MAX_OPTION_INT = 1 << 16  # widths, depths, kernels, resolutions: far beyond any real space
MAX_OPTION_FLOAT = 1024.0  # expand ratios, mlp ratios


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a yes/no"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def check_option(what: str, value: Any, like: Any, depth: int = 0) -> None:
    """A family option override has the preset value's kind (a list of choices may also be one
    list per block) and bounded numbers, so a typo or a hostile value is one line, not a
    TypeError deep in the constructor or a 1e16-weight allocation."""
    if depth > 8:
        raise UserError(f"{what} is nested too deeply")
    if _kind(value) != _kind(like) and not (like is None or value is None):
        raise UserError(f"{what} must be {_kind(like)}, got {_kind(value)} {value!r:.60}")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not 0 <= value <= MAX_OPTION_INT:
            raise UserError(f"{what} is {value}; expected 0..{MAX_OPTION_INT}")
    elif isinstance(value, float):
        if not 0.0 <= value <= MAX_OPTION_FLOAT:  # also refuses nan and inf
            raise UserError(f"{what} is {value}; expected 0..{MAX_OPTION_FLOAT:g}")
    elif isinstance(value, str):
        if len(value) > 64:
            raise UserError(f"{what} is longer than 64 characters")
    elif isinstance(value, (list, tuple)):
        if len(value) > 4096:
            raise UserError(f"{what} has {len(value)} entries; at most 4096")
        items = list(like) if isinstance(like, (list, tuple)) else []
        for i, item in enumerate(value):
            # a per-block spec nests one level deeper than the preset's shared list
            ref = items[min(i, len(items) - 1)] if items else item
            if isinstance(item, (list, tuple)) and not isinstance(ref, (list, tuple)):
                ref = [ref]
            check_option(f"{what}[{i}]", item, ref, depth + 1)
    elif isinstance(value, Mapping):
        extra, missing = sorted(set(value) - set(like)), sorted(set(like) - set(value))
        if extra or missing:
            raise UserError(f"{what}: {'unknown' if extra else 'missing'} key "
                            f"{(extra or missing)[0]!r}; expected keys: {sorted(like)}")
        for k, item in value.items():
            check_option(f"{what}[{k!r}]", item, like[k], depth + 1)


def choices(values: Sequence[Any]) -> list[Any]:
    """Sorted, de-duplicated choices (small -> large), as the SearchSpace expects."""
    return sorted(set(values))


def depth_gates(depth_dim: str, depths: Sequence[int], block_dims: Sequence[Sequence[str]]
                ) -> dict[str, tuple[str, int]]:
    """The gates of one depth dimension: block j's dimensions (`block_dims[j]`) matter only at
    depth >= j + 1; blocks within the smallest depth are always active and need none."""
    return {name: (depth_dim, j + 1) for j, names in enumerate(block_dims) if j + 1 > min(depths)
            for name in names}


def per_block(spec: Any, n: int) -> list[list[Any]]:
    """A stage's choice list for each of its `n` blocks: one shared list or one list per block."""
    if spec and isinstance(spec[0], (list, tuple)):
        if len(spec) != n:
            raise UserError(f"per-block choices have {len(spec)} entries for {n} blocks")
        return [choices(s) for s in spec]
    return [choices(spec)] * n


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def active_blocks(stage_blocks: Sequence[Sequence[int]], arch: Mapping[str, Any]) -> list[int]:
    """Indices of the blocks an arch runs: the first `stage{s}.depth` blocks of each stage."""
    return [i for s, idx in enumerate(stage_blocks) for i in idx[: arch[f"stage{s}.depth"]]]


class Regularization:
    """Mixin for a family: dropout before the classifier and drop-path (stochastic depth) on
    residual branches, both active in training mode only and off (0) unless asked for.

    The family lists its drop-path blocks (`_drop_path_blocks()`, in depth order, each with a
    `drop_path_rate` its forward passes to `drop_path`); block i of n gets `drop_path * i /
    (n - 1)`, the linear rule of stochastic depth (Huang et al. 2016, timm). The training loop
    changes the rates per member through `set_regularization` (BigNAS: largest child only).
    """

    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0

    @property
    def regularization(self) -> tuple[float, float]:
        return self.dropout_rate, self.drop_path_rate

    def set_regularization(self, dropout: float, drop_path: float) -> None:
        for name, value in (("dropout", dropout), ("drop_path", drop_path)):
            if not 0 <= value < 1:
                raise UserError(f"{name}: expected a number in [0, 1), got {value!r}")
        self.dropout_rate, self.drop_path_rate = float(dropout), float(drop_path)
        blocks = self._drop_path_blocks()
        for i, block in enumerate(blocks):
            block.drop_path_rate = self.drop_path_rate * i / max(1, len(blocks) - 1)

    def _drop_path_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def classifier_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout on the classifier's input (identity in eval mode or at rate 0)."""
        if self.training and self.dropout_rate > 0:  # type: ignore[attr-defined]
            return F.dropout(x, self.dropout_rate, training=True)
        return x


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch's output: zero it per sample with probability
    `rate`, scale the kept ones by 1 / (1 - rate); identity when not training or at rate 0."""
    if not (training and rate > 0):
        return x
    from timm.layers import drop_path as timm_drop_path  # timm is slow to import: only when used

    return timm_drop_path(x, rate, training)


def nonzero_options(**options: float) -> dict[str, float]:
    """The options to record in build_config: left out at 0, so older configs stay identical."""
    return {k: v for k, v in options.items() if v}
