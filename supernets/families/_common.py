"""Helpers shared by the supernet families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    base.update(overrides)
    return base


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
