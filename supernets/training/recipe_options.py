"""The nested option sections of the sampling recipes (`train.attentive`, `train.ofa_ps`,
`train.pada`), validated into plain JSON-ready dicts.

`TrainHParams` stores each section as a normalised dict (every key present, lists not tuples)
rather than as an object, so `to_dict()` goes into a checkpoint's JSON unchanged and a resume
compares the saved section with the configured one key for key. The dataclasses here are the
schema: their fields, types and checks; `typed(...)` turns a stored dict back into one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasbench_core.errors import ConfigError
from supernets.training.values import check_value as _check
from supernets.training.values import coerce_value as _coerce

ATTENTIVE_MODES = ("best_up", "worst_up")
PS_GROUPS = ("kernel", "depth", "expand", "width")


@dataclass(frozen=True)
class AttentiveOptions:
    """AttentiveNAS (Wang et al. 2021): each non-extreme sandwich member is the best
    (`best_up`) or worst (`worst_up`) of `candidates` uniformly drawn archs, scored by the
    supernet's own minibatch loss on the step's batch (lower loss = better)."""

    mode: str = "best_up"
    candidates: int = 5

    def check(self, key: str) -> None:
        _check(self.mode in ATTENTIVE_MODES, f"{key}.mode", self.mode, f"one of {ATTENTIVE_MODES}")
        _check(self.candidates >= 1, f"{key}.candidates", self.candidates, "an integer >= 1")


@dataclass(frozen=True)
class ProgressiveOptions:
    """OFA progressive shrinking: a largest-only phase, then one phase per group of `phases`
    (default: the groups the space has, in OFA's order kernel -> depth -> expand -> width).
    A phase samples the groups released so far, the rest at their maximum. `phase_epochs`:
    epochs of each phase, largest first (one more entry than `phases`); the last phase also
    runs any epochs beyond their sum, and phases starting after the last epoch do not run (a
    shorter run resumed with more `epochs` reaches them). None splits `epochs` evenly."""

    phases: list[str] | None = None
    phase_epochs: list[int] | None = None

    def check(self, key: str) -> None:
        if self.phases is not None:
            for group in self.phases:
                _check(group in PS_GROUPS, f"{key}.phases", group, f"groups from {PS_GROUPS}")
            _check(len(set(self.phases)) == len(self.phases) and self.phases, f"{key}.phases",
                   self.phases, "a non-empty list without repeats")
        if self.phase_epochs is not None:
            for n in self.phase_epochs:
                _check(n >= 1, f"{key}.phase_epochs", n, "integers >= 1")
            if self.phases is not None:
                _check(len(self.phase_epochs) == len(self.phases) + 1, f"{key}.phase_epochs",
                       self.phase_epochs, f"{len(self.phases) + 1} entries (largest, then "
                       f"{', '.join(self.phases)})")


@dataclass(frozen=True)
class PadaOptions:
    """PA&DA (Lu et al. 2023): `path` samples each dimension's choice with probability
    proportional to the mean gradient norm of the paths that used it; `data` draws each
    epoch's examples with probability proportional to their last gradient-norm proxy
    |softmax - onehot|. Both mix with uniform by tau, which ramps linearly from `tau_start`
    at the first epoch to `tau_end` at the last (PA&DA: 0 -> 1), so training starts uniform."""

    path: bool = True
    data: bool = True
    tau_start: float = 0.0
    tau_end: float = 1.0

    def check(self, key: str) -> None:
        for name in ("tau_start", "tau_end"):
            value = getattr(self, name)
            _check(0 <= value <= 1, f"{key}.{name}", value, "a number in [0, 1]")
        _check(self.path or self.data, f"{key}", dataclasses.asdict(self),
               "path or data (or both) true")


SECTIONS: dict[str, tuple[str, type]] = {
    "attentive": ("attentive", AttentiveOptions),
    "ofa_ps": ("progressive", ProgressiveOptions),
    "pada": ("pada", PadaOptions),
}
"""Option key -> (the `sampling` value it configures, its schema)."""


def normalize(key: str, value: Any, sampling: str) -> dict[str, Any] | None:
    """`value` (a mapping, or None) validated against section `key`'s schema, as a plain dict
    with every field; the section is filled with its defaults when `sampling` needs it."""
    wanted, cls = SECTIONS[key]
    if value is None and sampling != wanted:
        return None
    if value is not None and sampling != wanted:
        raise ConfigError(f"{key}: set only with sampling '{wanted}' (sampling is "
                          f"{sampling!r}); remove it or set it to null")
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    options = _build(cls, dict(value or {}), key)
    options.check(key)
    return dataclasses.asdict(options)


def typed(key: str, value: Mapping[str, Any]) -> Any:
    """The schema object of a normalised section dict."""
    return SECTIONS[key][1](**value)


def _build(cls: type, data: dict[str, Any], key: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(f"{key}.{name}: unknown key; allowed: {', '.join(names)}")
        hint = hints[name]
        item = _list_item(hint)
        if item is None:
            data[name] = _coerce(f"{key}.{name}", value, hint)
        elif value is not None:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}.{name}: expected a list, got {value!r}")
            data[name] = [_coerce(f"{key}.{name}", v, item) for v in value]
    return cls(**data)


def _list_item(hint: Any) -> Any:
    """The item type of `list[T] | None`, else None."""
    for arg in typing.get_args(hint) or (hint,):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return None
