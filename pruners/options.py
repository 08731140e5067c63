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


class PrunerOptions(BaseModel):
    """No options: the base of every method's model."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MagnitudeOptions(PrunerOptions):
    min_keep: MinKeep = 0


class GradualOptions(PrunerOptions):
    steps: Annotated[int, Field(ge=1)] = 10
    initial_sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    min_keep: MinKeep = 0


class UniformPlusOptions(PrunerOptions):
    last_keep: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2


class ErkOptions(PrunerOptions):
    score: Literal["magnitude", "random"] = "magnitude"
    seed: int = 0


class RandomOptions(PrunerOptions):
    seed: int = 0


class LotteryOptions(PrunerOptions):
    fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    scope: Literal["global", "layer"] = "global"
    rewind: str = "0it"
    train: str = "1ep"

    @field_validator("rewind", "train")
    @classmethod
    def _is_a_span(cls, value: str) -> str:
        try:
            parse_span(value)
        except Exception as exc:  # parse_span's ConfigError becomes this field's message
            raise ValueError(str(exc)) from None
        return value


class LayerDPOptions(PrunerOptions):
    num_samples: Annotated[int, Field(ge=1)] = 1024
    num_amounts: Annotated[int, Field(ge=2)] = 101
    budget_units: Annotated[int, Field(ge=1)] = 4096
    worst_case: bool = False
    iterative_steps: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 256
    seed: int = 0
    min_keep: MinKeep = 0


__all__ = ["ErkOptions", "GradualOptions", "LayerDPOptions", "LotteryOptions", "MagnitudeOptions",
           "MinKeep", "PrunerOptions", "RandomOptions", "UniformPlusOptions"]
