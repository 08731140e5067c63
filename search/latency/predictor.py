"""Learned latency predictors (HAT/nn-Meter style) tied to the device they were measured on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from search.predictors.base import ArchPredictor, PredictorError
from supernets.space import SearchSpace


class LatencyPredictor(ArchPredictor):
    """Predicts `latency_ms` on a log scale (relative error) for one device key."""

    kind = "latency"

    def __init__(
        self,
        space: SearchSpace,
        *,
        encoding: str = "features",
        use_macs: bool = False,
        candidates: Sequence[str] | None = None,
        folds: int = 5,
        seed: int = 0,
        device: str | None = None,
    ):
        super().__init__(
            space, "latency_ms", encoding=encoding, use_macs=use_macs, log_target=True,
            candidates=candidates, folds=folds, seed=seed,
            context={"device": device} if device else None,
        )

    @property
    def device(self) -> str | None:
        return self.context.get("device")

    def fit(self, table: pd.DataFrame) -> LatencyPredictor:
        """Fit on one device's latency table; its `device` column becomes the predictor's device."""
        if "device" in table.columns:
            devices = sorted(set(table["device"]))
            if len(devices) != 1:
                raise PredictorError(f"latency table mixes devices {devices}; fit one device at a time")
            if self.device is not None and devices[0] != self.device:
                raise PredictorError(
                    f"latency table was measured on {devices[0]!r}, predictor is for {self.device!r}"
                )
            self.context["device"] = devices[0]
        super().fit(table)
        return self

    def evaluate(self, table: pd.DataFrame) -> dict[str, float]:
        if "device" in table.columns and self.device is not None:
            other = sorted(set(table["device"]) - {self.device})
            if other:
                raise PredictorError(
                    f"latency table was measured on {other[0]!r}, predictor is for {self.device!r}"
                )
        return super().evaluate(table)

    @classmethod
    def load(
        cls, path: str | Path, space: SearchSpace | None = None, device: str | None = None
    ) -> LatencyPredictor:
        """Refit a saved predictor; a different `device` key or space raises PredictorError."""
        expect = {"device": device} if device is not None else {}
        return super().load(path, space, **expect)  # type: ignore[return-value]

    @classmethod
    def _from_meta(cls, space: SearchSpace, meta: dict[str, Any]) -> LatencyPredictor:
        return cls(space, encoding=meta["encoding"], use_macs=meta["use_macs"],
                   folds=meta["folds"], seed=meta["seed"], device=meta["context"].get("device"))
