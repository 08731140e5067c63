"""`ArchPredictor`: arch -> value regressors on search-space encodings, saved without pickle.

`save` writes the training table (Parquet) and a JSON of the chosen regressor, its
hyperparameters, the space and the context (e.g. device). `load` checks the space and the
context, then *refits* the same regressor on the same rows, so a predictor file can never
run code, and the refit gives the same predictions (fixed seeds, one BLAS thread).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasbench_core.atomic import atomic_path, atomic_write_text
from nasbench_core.errors import UserError
from nasbench_core.readers import read_parquet
from search.predictors.metrics import kendall_tau, regression_metrics
from search.predictors.regressors import Selection, fit_quietly, make_regressor, select_regressor
from supernets.space import Arch, SearchSpace

FORMAT = "nasbench-predictor/1"
# What every predictor file holds, accuracy or latency: `load` indexes them directly.
META_KEYS = ("space", "space_fingerprint", "context", "table", "model", "cv_score", "encoding",
             "folds", "seed")
ENCODINGS = ("features", "one_hot")


class PredictorError(UserError):
    """A predictor file is unreadable or was fitted for another space or device."""


class ArchPredictor:
    """Predict `target` from an arch's encoding (optionally + log MACs); regressor chosen by CV."""

    kind = "generic"

    def __init__(
        self,
        space: SearchSpace,
        target: str,
        *,
        encoding: str = "features",
        use_macs: bool = False,
        log_target: bool = False,
        candidates: Sequence[str] | None = None,
        folds: int = 5,
        seed: int = 0,
        context: Mapping[str, str] | None = None,
    ):
        if encoding not in ENCODINGS:
            raise UserError(f"predictor encoding {encoding!r} is unknown; expected one of {ENCODINGS}")
        self.space = space
        self.target = target
        self.encoding = encoding
        self.use_macs = use_macs
        self.log_target = log_target
        self.candidates = list(candidates) if candidates else None
        self.folds = folds
        self.seed = seed
        self.context = dict(context or {})
        self.selection: Selection | None = None
        self.macs_fn: Callable[[Arch], float] | None = None
        self._model: Any = None
        self._table: pd.DataFrame | None = None

    # -- encoding --------------------------------------------------------------------------
    def encode(self, archs: Sequence[Mapping[str, Any]], macs: Sequence[float] | None = None) -> np.ndarray:
        enc = self.space.features if self.encoding == "features" else self.space.one_hot
        X = np.stack([enc(a) for a in archs]).astype(np.float64)
        if not self.use_macs:
            return X
        if macs is None:
            if self.macs_fn is None:
                raise PredictorError(
                    f"{self.kind} predictor uses MACs: pass macs=... or set predictor.macs_fn"
                )
            macs = [self.macs_fn(a) for a in archs]
        return np.column_stack([X, np.log(np.asarray(macs, dtype=np.float64))])

    def _xy(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        needed = ["arch", self.target] + (["macs"] if self.use_macs else [])
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise PredictorError(f"{self.kind} predictor table lacks column(s) {missing}")
        archs = [self.space.parse(text) for text in table["arch"]]
        y = table[self.target].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise PredictorError(f"{self.kind} predictor table has NaN/inf in {self.target!r}")
        macs = table["macs"].to_numpy(dtype=np.float64) if self.use_macs else None
        return self.encode(archs, macs), y

    # -- fit / predict ---------------------------------------------------------------------
    def fit(self, table: pd.DataFrame) -> ArchPredictor:
        """Choose a regressor by K-fold CV on `table` (columns arch, target[, macs]), then fit it."""
        X, y = self._xy(table)
        self.selection = select_regressor(
            X, y, candidates=self.candidates, folds=self.folds, seed=self.seed,
            log_target=self.log_target,
        )
        return self._fit_chosen(table, X, y)

    def refit(self, table: pd.DataFrame) -> ArchPredictor:
        """Fit the already chosen regressor on `table` (no new selection), e.g. on all rows."""
        if self.selection is None:
            raise PredictorError(f"{self.kind} predictor has no chosen regressor: call fit first")
        X, y = self._xy(table)
        return self._fit_chosen(table, X, y)

    def _fit_chosen(self, table: pd.DataFrame, X: np.ndarray, y: np.ndarray) -> ArchPredictor:
        assert self.selection is not None
        model = make_regressor(
            self.selection.name, self.selection.params, seed=self.seed, log_target=self.log_target
        )
        self._model = fit_quietly(model, X, y)
        columns = ["arch_id", "arch", self.target] + (["macs"] if self.use_macs else [])
        self._table = table[[c for c in columns if c in table.columns]].reset_index(drop=True)
        return self

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def predict(
        self, archs: Sequence[Mapping[str, Any]], macs: Sequence[float] | None = None
    ) -> np.ndarray:
        if self._model is None:
            raise PredictorError(f"{self.kind} predictor is not fitted: call fit(table) first")
        archs = [self.space.validate(a) for a in archs]
        return np.asarray(self._model.predict(self.encode(archs, macs)), dtype=np.float64)

    def predict_table(self, table: pd.DataFrame) -> np.ndarray:
        archs = [self.space.parse(text) for text in table["arch"]]
        macs = table["macs"].to_numpy(dtype=np.float64) if self.use_macs else None
        return self.predict(archs, macs)

    def evaluate(self, table: pd.DataFrame) -> dict[str, float]:
        """Held-out metrics on `table`, with the MACs proxy's Kendall tau beside them if known."""
        truth = table[self.target].to_numpy(dtype=np.float64)
        metrics = regression_metrics(truth, self.predict_table(table))
        if "macs" in table.columns:
            metrics["macs_kendall_tau"] = kendall_tau(truth, table["macs"].to_numpy(dtype=float))
        return metrics

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `<path>.json` (choice + space + context) and `<path>.parquet` (training rows)."""
        if self._table is None or self.selection is None:
            raise PredictorError(f"{self.kind} predictor is not fitted: nothing to save")
        json_path = Path(path).with_suffix(".json")
        table_path = json_path.with_suffix(".parquet")
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "target": self.target,
            "encoding": self.encoding,
            "use_macs": self.use_macs,
            "log_target": self.log_target,
            "seed": self.seed,
            "folds": self.folds,
            "model": {"name": self.selection.name, "params": self.selection.params},
            "cv_score": self.selection.cv_score,
            "space": self.space.to_dict(),
            "space_fingerprint": self.space.fingerprint(),
            "context": self.context,
            "table": table_path.name,
            "n_train": len(self._table),
        }
        with atomic_path(table_path) as tmp:
            self._table.to_parquet(tmp, index=False)
        atomic_write_text(json_path, json.dumps(meta, indent=2, sort_keys=True))
        return json_path

    @classmethod
    def load(
        cls, path: str | Path, space: SearchSpace | None = None, **expect: str
    ) -> ArchPredictor:
        """Read a saved predictor and refit it; `space`/`expect` must match what it was fitted for."""
        json_path = Path(path).with_suffix(".json")
        meta = _read_meta(json_path)
        if meta.get("kind") != cls.kind and cls.kind != "generic":
            raise PredictorError(f"{json_path} holds a {meta.get('kind')} predictor, not {cls.kind}")
        stored = SearchSpace(meta["space"])
        if space is not None and space.fingerprint() != meta["space_fingerprint"]:
            raise PredictorError(
                f"{json_path} was fitted for search space {meta['space_fingerprint']}, "
                f"not this one ({space.fingerprint()})"
            )
        for key, wanted in expect.items():
            have = meta["context"].get(key)
            if have != wanted:
                raise PredictorError(f"{json_path} was fitted for {key} {have!r}, not {wanted!r}")
        predictor = cls._from_meta(space or stored, meta)
        table = read_parquet(json_path.parent / meta["table"], PredictorError).to_pandas()
        predictor.selection = Selection(
            meta["model"]["name"], meta["model"]["params"], meta["cv_score"], pd.DataFrame()
        )
        return predictor.refit(table)

    @classmethod
    def _from_meta(cls, space: SearchSpace, meta: dict[str, Any]) -> ArchPredictor:
        return ArchPredictor(
            space, meta["target"], encoding=meta["encoding"], use_macs=meta["use_macs"],
            log_target=meta["log_target"], folds=meta["folds"], seed=meta["seed"],
            context=meta["context"],
        )


def _read_meta(json_path: Path) -> dict[str, Any]:
    if not json_path.exists():
        raise PredictorError(f"predictor file {json_path} does not exist")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictorError(f"predictor file {json_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PredictorError(f"predictor file {json_path} is not a {FORMAT} file")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise PredictorError(f"predictor file {json_path} lacks {missing} (truncated or edited by hand?)")
    if not (json_path.parent / meta.get("table", "")).is_file():
        raise PredictorError(f"predictor table {json_path.parent / meta.get('table', '')} is missing")
    return meta
