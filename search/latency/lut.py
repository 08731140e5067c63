"""OFA-style latency lookup table: time each block alone at its input shape, sum, add a constant.

A family may describe its blocks itself with `supernet.iter_block_specs(arch)` yielding
`(key, module, input_shape)`. Otherwise we decompose the extracted subnet: its leaf blocks
are the children of the root, recursing into `nn.Sequential`/`nn.ModuleList` containers, and
forward pre-hooks record each block's input shape. A block's key is a hash of its structure
(`repr`) and input shape, so equal blocks in different archs share one timing. What the
blocks miss (glue code in `forward`, Python overhead) is the fitted constant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nasbench_core.atomic import atomic_write_text
from nasbench_core.errors import UserError
from nasbench_core.readers import read_json
from search.costs import subnet_input_shape
from search.latency.measure import LatencySettings, measure_latency
from search.predictors.base import PredictorError
from supernets.space import SearchSpace

LUT_FORMAT = "nasbench-latency-lut/1"
LUT_KEYS = ("device", "settings", "space_fingerprint", "constant_ms", "entries")  # what `load` reads
CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class BlockSpec:
    key: str
    module: nn.Module
    input_shape: tuple[int, ...]


def block_key(module: nn.Module, input_shape: Sequence[int]) -> str:
    text = f"{module!r}|{tuple(int(v) for v in input_shape)}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _leaves(module: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for child in module.children():
        out.extend(_leaves(child) if isinstance(child, CONTAINERS) else [child])
    return out


def decompose(model: nn.Module, input_shape: Sequence[int]) -> list[BlockSpec]:
    """Leaf blocks of `model` in call order, with the one-sample input shape each one saw."""
    leaves = _leaves(model) or [model]
    calls: list[BlockSpec] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise UserError(
                f"cannot time block {type(module).__name__} alone (it takes {len(args)} inputs); "
                "give the supernet family an iter_block_specs(arch) method"
            )
        shape = tuple(int(v) for v in args[0].shape[1:])
        calls.append(BlockSpec(block_key(module, shape), module, shape))

    handles = [leaf.register_forward_pre_hook(hook) for leaf in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def block_specs(
    supernet: nn.Module, arch: Mapping[str, Any], input_shape: Sequence[int] | None = None
) -> list[BlockSpec]:
    """The arch's blocks: from the family's `iter_block_specs` if it has one, else by hooks."""
    if hasattr(supernet, "iter_block_specs"):
        return [BlockSpec(str(k), m, tuple(s)) for k, m, s in supernet.iter_block_specs(arch)]
    shape = subnet_input_shape(supernet, arch, input_shape)
    return decompose(supernet.extract(arch), shape)


class LatencyLUT:
    """Per-block latencies on one device; predicts sum(blocks) + constant for an arch."""

    def __init__(self, settings: LatencySettings | None = None):
        self.settings = (settings or LatencySettings()).resolve()
        self.device = self.settings.device_info().key
        self.entries: dict[str, dict[str, Any]] = {}
        self.constant_ms = 0.0
        self.space_fingerprint: str | None = None

    def _check_space(self, supernet: nn.Module) -> None:
        fp = supernet.space.fingerprint()
        if self.space_fingerprint is None:
            self.space_fingerprint = fp
        elif fp != self.space_fingerprint:
            raise PredictorError(
                f"latency LUT was built for search space {self.space_fingerprint}, not {fp}"
            )

    def block_sum(self, specs: Sequence[BlockSpec]) -> float:
        """Sum of the blocks' latencies (ms), timing each block not yet in the table."""
        total = 0.0
        for spec in specs:
            if spec.key not in self.entries:
                result = measure_latency(spec.module, spec.input_shape, self.settings)
                self.entries[spec.key] = {
                    "ms": result.median_ms, "iqr_ms": result.iqr_ms,
                    "block": type(spec.module).__name__, "input_shape": list(spec.input_shape),
                }
            total += self.entries[spec.key]["ms"]
        return total

    def block_sums(self, supernet: nn.Module, archs: Sequence[Mapping[str, Any]],
                   input_shape: Sequence[int] | None = None) -> np.ndarray:
        self._check_space(supernet)
        return np.array([self.block_sum(block_specs(supernet, a, input_shape)) for a in archs])

    def fit(self, supernet: nn.Module, table: pd.DataFrame,
            input_shape: Sequence[int] | None = None) -> LatencyLUT:
        """Time the blocks of the table's archs; constant = median(measured - block sum)."""
        if "device" in table.columns and set(table["device"]) != {self.device}:
            raise PredictorError(
                f"latency table device {sorted(set(table['device']))} is not the LUT's {self.device!r}"
            )
        archs = [supernet.space.parse(text) for text in table["arch"]]
        sums = self.block_sums(supernet, archs, input_shape)
        self.constant_ms = float(np.median(table["latency_ms"].to_numpy(dtype=float) - sums))
        return self

    def predict(self, supernet: nn.Module, archs: Sequence[Mapping[str, Any]],
                input_shape: Sequence[int] | None = None) -> np.ndarray:
        return self.block_sums(supernet, archs, input_shape) + self.constant_ms

    def bound(self, supernet: nn.Module, input_shape: Sequence[int] | None = None) -> BoundLUT:
        """This table as a search predictor of `supernet`'s archs (`predict(archs)`)."""
        self._check_space(supernet)
        return BoundLUT(self, supernet, input_shape)

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".json")
        meta = {
            "format": LUT_FORMAT, "device": self.device, "settings": asdict(self.settings),
            "space_fingerprint": self.space_fingerprint, "constant_ms": self.constant_ms,
            "entries": self.entries,
        }
        atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None,
             device: str | None = None) -> LatencyLUT:
        path = Path(path).with_suffix(".json")
        meta = read_json(path, PredictorError, required=("format",))
        if meta["format"] != LUT_FORMAT:
            raise PredictorError(f"{path} is not a {LUT_FORMAT} file")
        missing = [key for key in LUT_KEYS if key not in meta]
        if missing:
            raise PredictorError(f"latency LUT {path} lacks {missing} (truncated or edited by hand?)")
        if device is not None and meta["device"] != device:
            raise PredictorError(f"{path} was measured on {meta['device']!r}, not {device!r}")
        if space is not None and meta["space_fingerprint"] not in (None, space.fingerprint()):
            raise PredictorError(
                f"{path} was built for search space {meta['space_fingerprint']}, "
                f"not this one ({space.fingerprint()})"
            )
        lut = cls(LatencySettings(**meta["settings"]))
        lut.device = meta["device"]
        lut.entries = meta["entries"]
        lut.constant_ms = float(meta["constant_ms"])
        lut.space_fingerprint = meta["space_fingerprint"]
        return lut


def is_lut_file(path: str | Path) -> bool:
    """True when `path` holds a lookup table (rather than a learned predictor)."""
    try:
        return json.loads(Path(path).with_suffix(".json").read_text()).get("format") == LUT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class BoundLUT:
    """A lookup table with the supernet and input shape it predicts for: blocks it has not
    timed yet are timed on first use (on this machine: the table's device key is checked on
    load), then summed like the rest."""

    lut: LatencyLUT
    supernet: nn.Module
    input_shape: Sequence[int] | None = None

    def predict(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.lut.predict(self.supernet, archs, self.input_shape)
