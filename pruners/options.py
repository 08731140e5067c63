"""Typed options per pruning method, checked by value before any weight is touched.

Each registry entry in `pruners.methods` names one of these models, so
`prune.kwargs: {fraction: 1.5}` or `{steps: 0}` is a one-line error naming the option before a
model is even built, the same from the CLI, from a config and from `pruners.prune(...)`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator

from pruners.lottery import parse_span

MinKeep = NonNegativeInt | Annotated[float, Field(ge=0.0, le=1.0)]
"""Weights every layer keeps: a count, or a fraction of the layer."""

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A seed as `run.seed` takes it (numpy's generators refuse negative ones)."""

Count = Annotated[int, Field(ge=1, le=1_000_000)]
"""A number of steps, samples or units: bounded so a typo (10**12) is refused in one line
before a model is touched, not found by an allocation that never ends."""


class PrunerOptions(BaseModel):
    """No options: the base of every method's model."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MagnitudeOptions(PrunerOptions):
    min_keep: MinKeep = 0


class GradualOptions(PrunerOptions):
    """Zhu & Gupta's cubic schedule in `steps` prunings; `finetune_steps` (`200it`, `1ep`; `0it`:
    none) of fine-tuning follow each, through the runner's `finetune`."""

    steps: Annotated[int, Field(ge=1, le=10_000)] = 10
    initial_sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    min_keep: MinKeep = 0
    finetune_steps: str = "1ep"

    @field_validator("finetune_steps")
    @classmethod
    def _is_a_span(cls, value: str) -> str:
        try:
            parse_span(value, "finetune_steps")
        except Exception as exc:  # parse_span's ConfigError becomes this field's message
            raise ValueError(str(exc)) from None
        return value


class UniformPlusOptions(PrunerOptions):
    last_keep: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2


class ErkOptions(PrunerOptions):
    score: Literal["magnitude", "random"] = "magnitude"
    seed: Seed = 0


class RandomOptions(PrunerOptions):
    seed: Seed = 0


class LotteryOptions(PrunerOptions):
    """IMP with rewinding (`pruners.lottery`). `layers_to_ignore`: parameter-name patterns kept
    dense (None: the output layer, as open_lth; `[]`: none). `output_rate`: prune the output
    layer at this rate per level instead (the paper's half rate: 0.1 with fraction 0.2).
    `controls` (`random`, `reinit`) train at the final masks; through `prune`, `on_level` then
    also gets `on_level(level, control_model, control=kind)`. `seed` (None: torch's initial
    seed) seeds each level's training."""

    fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    scope: Literal["global", "layer"] = "global"
    rewind: str = "0it"
    train: str = "1ep"
    layers_to_ignore: list[str] | None = None
    output_rate: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    controls: list[Literal["random", "reinit"]] = Field(default_factory=list)
    seed: Seed | None = None

    @field_validator("rewind", "train")
    @classmethod
    def _is_a_span(cls, value: str) -> str:
        try:
            parse_span(value)
        except Exception as exc:  # parse_span's ConfigError becomes this field's message
            raise ValueError(str(exc)) from None
        return value

    @field_validator("controls")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} names a control twice")
        return value


class LayerDPOptions(PrunerOptions):
    """Layer-DP (`pruners.layer_dp`). `budget`: what the DP's budget counts, kept weights or
    kept MACs (`flops`: the sparsity is then a MAC fraction). `curves`: `adaptive` (cached
    suffix forwards, coarse-to-fine amounts where the DP could pick), `cached` (every amount,
    cached suffix) or `reference` (every amount, full forwards). `coarse_amounts`: the first
    grid an adaptive curve is measured on; `refine_tol` (0: off): also measure spans where
    PCHIP and the chord differ by more than this fraction of the DP objective / L.
    `amount_batch`: amounts per forward. `iterative_steps` DP steps, `finetune_steps`
    optimizer steps of the runner's fine-tune between them."""

    num_samples: Count = 1024
    num_amounts: Annotated[int, Field(ge=2, le=10_001)] = 101
    budget_units: Count = 4096
    budget: Literal["params", "flops"] = "params"
    worst_case: bool = False
    iterative_steps: Annotated[int, Field(ge=1, le=1000)] = 1
    finetune_steps: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    curves: Literal["adaptive", "cached", "reference"] = "adaptive"
    coarse_amounts: Annotated[int, Field(ge=3, le=10_001)] = 11
    refine_tol: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    amount_batch: Annotated[int, Field(ge=1, le=1024)] = 4
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 256
    seed: Seed = 0
    min_keep: MinKeep = 0


__all__ = ["Count", "ErkOptions", "GradualOptions", "LayerDPOptions", "LotteryOptions", "MagnitudeOptions",
           "MinKeep", "PrunerOptions", "RandomOptions", "Seed", "UniformPlusOptions"]
