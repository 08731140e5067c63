"""Accuracy predictors (DyNAS-T's "lightly trained" kind): a few dozen evaluated archs in,
a cheap top-1 estimate for every other arch out, to steer a search between true evaluations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.predictors.base import ArchPredictor
from supernets.space import SearchSpace


class AccuracyPredictor(ArchPredictor):
    """Predicts `target` (default `top1`) on a linear scale, chosen by CV RMSE."""

    kind = "accuracy"

    def __init__(
        self,
        space: SearchSpace,
        target: str = "top1",
        *,
        encoding: str = "features",
        candidates: Sequence[str] | None = None,
        folds: int = 5,
        seed: int = 0,
    ):
        super().__init__(
            space, target, encoding=encoding, log_target=False, candidates=candidates,
            folds=folds, seed=seed,
        )

    @classmethod
    def _from_meta(cls, space: SearchSpace, meta: dict[str, Any]) -> AccuracyPredictor:
        return cls(space, meta["target"], encoding=meta["encoding"], folds=meta["folds"],
                   seed=meta["seed"])
