"""Named training recipes: presets of `TrainHParams` defaults that a config picks by name.

A recipe is only defaults. Every behaviour it switches on is an ordinary hparam field (the
schedule, zero-init, where dropout applies), so a user key always overrides the recipe's value
and a run records exactly what it trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nasbench_core.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """A named preset: `defaults` are `TrainHParams` field values, overridden by user keys."""

    name: str
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("default", "sandwich rule + in-place distillation, warmup + cosine (the field defaults)"),
        Recipe(
            "bignas",
            "BigNAS (Yu et al. 2020): zero-init of each residual block's last BN, exponential lr "
            "decay to a constant 5% ending, dropout and drop-path on the largest child only, label "
            "smoothing on the largest, in-place distillation of the others",
            MappingProxyType({
                "zero_init_residual": True,
                "lr_schedule": "exp",
                "min_lr_ratio": 0.05,
                "dropout": 0.1,
                "drop_path": 0.1,
                "regularize": "largest",
                "label_smoothing": 0.1,
                "sampling": "sandwich",
            }),
        ),
    )
}


def recipe(name: Any) -> Recipe:
    """The recipe called `name`; a ConfigError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]
