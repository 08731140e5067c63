"""SearchSpace: ordered named dimensions with finite choices; an arch is a plain dict.

Canonical form of an arch is JSON with sorted keys; `arch_id` is a short stable hash of it.
Optimizers see an arch as an integer-index vector (`encode`/`decode`); predictors and routers
see it as a normalised feature vector (`features`) or one-hot vector (`one_hot`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasbench_core.errors import ArchError

Choice = int | float | str
Arch = dict[str, Choice]


@dataclass(frozen=True)
class Dimension:
    """One named choice point, e.g. `stage2.depth: (2, 3, 4)`; choices ordered small to large."""

    name: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ArchError(f"dimension {self.name!r} has no choices")
        if len(set(self.choices)) != len(self.choices):
            raise ArchError(f"dimension {self.name!r} has repeated choices {list(self.choices)}")

    def index(self, value: Choice) -> int:
        for i, choice in enumerate(self.choices):
            if choice == value and type(choice) is type(value) or _same_number(choice, value):
                return i
        raise ArchError(
            f"arch key {self.name!r} has value {value!r}; allowed: {list(self.choices)}"
        )


def _same_number(a: Any, b: Any) -> bool:
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return isinstance(a, numeric) and isinstance(b, numeric) and a == b


class SearchSpace:
    """An ordered set of named dimensions; samples, validates and encodes archs."""

    def __init__(self, dims: Iterable[Dimension] | Mapping[str, Sequence[Choice]]):
        if isinstance(dims, Mapping):
            dims = [Dimension(name, tuple(choices)) for name, choices in dims.items()]
        self.dims: tuple[Dimension, ...] = tuple(dims)
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ArchError(f"search space has repeated dimension names: {names}")
        self._by_name = {d.name: d for d in self.dims}

    # -- introspection -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def __len__(self) -> int:
        return len(self.dims)

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dims)

    def __getitem__(self, name: str) -> Dimension:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"SearchSpace({len(self)} dims, {self.cardinality:.3g} archs)"

    @property
    def cardinality(self) -> float:
        return float(np.prod([len(d.choices) for d in self.dims], dtype=float))

    @property
    def num_choices(self) -> np.ndarray:
        """Choices per dimension, as optimizer upper bounds (+1)."""
        return np.array([len(d.choices) for d in self.dims], dtype=np.int64)

    # -- archs -----------------------------------------------------------------------------
    def sample(self, seed_or_rng: int | random.Random | np.random.Generator | None = None) -> Arch:
        """A uniformly random arch; an int seed gives the same arch every time."""
        rng = seed_or_rng
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(None if rng is None else int(rng))
        if isinstance(rng, random.Random):
            return {d.name: rng.choice(d.choices) for d in self.dims}
        return {d.name: d.choices[int(rng.integers(len(d.choices)))] for d in self.dims}

    def smallest(self) -> Arch:
        return {d.name: d.choices[0] for d in self.dims}

    def largest(self) -> Arch:
        return {d.name: d.choices[-1] for d in self.dims}

    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Return a clean copy of `arch` in dimension order, or raise ArchError naming the key."""
        if not isinstance(arch, Mapping):
            raise ArchError(f"an arch must be a mapping of name -> value, got {type(arch).__name__}")
        unknown = [k for k in arch if k not in self._by_name]
        if unknown:
            raise ArchError(f"arch has unknown key {unknown[0]!r}; this space has: {self.names}")
        missing = [d.name for d in self.dims if d.name not in arch]
        if missing:
            dim = self._by_name[missing[0]]
            raise ArchError(
                f"arch is missing key {dim.name!r}; allowed: {list(dim.choices)}"
            )
        return {d.name: d.choices[d.index(arch[d.name])] for d in self.dims}

    def canonical(self, arch: Mapping[str, Any]) -> str:
        """Canonical JSON of a valid arch: sorted keys, no spaces."""
        return json.dumps(self.validate(arch), sort_keys=True, separators=(",", ":"))

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        return arch_id_of_json(self.canonical(arch))

    def parse(self, text: str) -> Arch:
        """An arch from its JSON text, validated."""
        try:
            arch = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"arch is not valid JSON: {exc.msg} at char {exc.pos}") from None
        return self.validate(arch)

    # -- encodings -------------------------------------------------------------------------
    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        """Integer choice indices, one per dimension, for pymoo/optuna."""
        arch = self.validate(arch)
        return np.array([d.index(arch[d.name]) for d in self.dims], dtype=np.int64)

    def decode(self, indices: Sequence[int] | np.ndarray) -> Arch:
        idx = np.asarray(indices).round().astype(np.int64).reshape(-1)
        if idx.shape[0] != len(self.dims):
            raise ArchError(f"encoding has {idx.shape[0]} entries; this space has {len(self)}")
        arch = {}
        for d, i in zip(self.dims, idx, strict=True):
            if not 0 <= i < len(d.choices):
                raise ArchError(f"index {int(i)} out of range for {d.name!r} ({len(d.choices)} choices)")
            arch[d.name] = d.choices[int(i)]
        return arch

    def features(self, arch: Mapping[str, Any]) -> np.ndarray:
        """Normalised encoding in [0, 1]: numeric dims by value range, others by index."""
        arch = self.validate(arch)
        out = np.empty(len(self.dims), dtype=np.float32)
        for j, d in enumerate(self.dims):
            value = arch[d.name]
            if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices):
                lo, hi = float(min(d.choices)), float(max(d.choices))
                out[j] = 0.0 if hi == lo else (float(value) - lo) / (hi - lo)
            else:
                n = len(d.choices)
                out[j] = 0.0 if n == 1 else d.index(value) / (n - 1)
        return out

    def one_hot(self, arch: Mapping[str, Any]) -> np.ndarray:
        idx = self.encode(arch)
        out = np.zeros(int(self.num_choices.sum()), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(self.num_choices)[:-1]])
        out[offsets + idx] = 1.0
        return out

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, list[Choice]]:
        return {d.name: list(d.choices) for d in self.dims}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        data = json.loads(text)
        return cls([Dimension(name, tuple(choices)) for name, choices in data.items()])

    def fingerprint(self) -> str:
        """Short hash of the space definition: tells checkpoints and tables of two spaces apart."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]


def arch_id_of_json(canonical_json: str) -> str:
    """The arch_id of an arch already in canonical JSON form."""
    return hashlib.sha1(canonical_json.encode()).hexdigest()[:12]
