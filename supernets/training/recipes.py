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
        Recipe(
            "attentivenas",
            "AttentiveNAS (Wang et al. 2021): the sandwich's middle children are the best "
            "(BestUp; worst_up: WorstUp) of 5 random candidates by minibatch loss "
            "(train.attentive: {mode, candidates})",
            MappingProxyType({"sampling": "attentive"}),
        ),
        Recipe(
            "ofa_ps",
            "OFA progressive shrinking (Cai et al. 2020): the largest alone, then elastic kernel, "
            "depth, expand and width released phase by phase, the rest at the maximum, distilled from "
            "the largest (train.ofa_ps: {phases, phase_epochs})",
            MappingProxyType({"sampling": "progressive"}),
        ),
        Recipe(
            "pada",
            "PA&DA (Lu et al. 2023): single-path training, paths drawn per dimension in "
            "proportion to their gradient norms and examples in proportion to |softmax - "
            "onehot|, both ramped in from uniform (train.pada: {path, data, tau_start, tau_end})",
            MappingProxyType({"sampling": "pada", "grad_clip": 5.0}),
        ),
        Recipe(
            "instatune",
            "InstaTune (Sridhar et al. 2023): elastic fine-tuning of a pretrained model "
            "(supernet.from_timm with weights, or from_ofa): lr 0.005 after a short warmup, "
            "every non-largest member distilled from the frozen original model",
            MappingProxyType({
                "distill_from_initial": True,
                "lr": 0.005,
                "warmup_epochs": 0.25,
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
