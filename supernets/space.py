"""SearchSpace: ordered named dimensions with finite choices; an arch is a plain dict.

Some dimensions matter only in some archs: a block past its stage's active depth is skipped,
so its kernel or expand ratio changes nothing. A family declares that with a gate per
dimension (`active_if=(depth dim, min depth)`). `canonical(arch)` sets every inactive
dimension to its first choice, so one subnet has one canonical arch and one `arch_id` (a
short stable hash of the canonical arch's sorted-key JSON). Optimizers see an arch as an
integer-index vector (`encode`/`decode`); predictors and routers see a normalised feature
vector (`features`) or one-hot vector (`one_hot`) in which inactive dimensions are zero, so
two encodings of one subnet give identical inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
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
    """One named choice point, e.g. `stage2.depth: (2, 3, 4)`; choices ordered small to large.

    `active_if=(other, at)`: this dimension affects the subnet only when the arch's `other`
    dimension is at least `at` (and `other` is itself active), e.g. a stage's third block's
    kernel matters only at `stage.depth >= 3`.
    """

    name: str
    choices: tuple[Choice, ...]
    active_if: tuple[str, Choice] | None = None

    def __post_init__(self) -> None:
        if not self.choices:
            raise ArchError(f"dimension {self.name!r} has no choices")
        if len(set(self.choices)) != len(self.choices):
            raise ArchError(f"dimension {self.name!r} has repeated choices {list(self.choices)}")
        if self.active_if is not None:
            object.__setattr__(self, "active_if", tuple(self.active_if))

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


DimSpec = Sequence[Choice] | Mapping[str, Any]
"""A dimension in a mapping: its choices, or `{"choices": [...], "active_if": [dim, at]}`."""


def _dimension(name: str, spec: DimSpec, gates: Mapping[str, tuple[str, Choice]]) -> Dimension:
    if isinstance(spec, Mapping):
        gate = spec.get("active_if")
        return Dimension(name, tuple(spec["choices"]), None if gate is None else tuple(gate))
    return Dimension(name, tuple(spec), gates.get(name))


class SearchSpace:
    """An ordered set of named dimensions; samples, validates, canonicalises and encodes archs.

    `gates` maps a dimension to `(depth dimension, min value)` for mappings of plain choice
    lists; `to_dict()` writes gated dimensions as `{"choices", "active_if"}` so a stored space
    rebuilds with its gates.
    """

    def __init__(self, dims: Iterable[Dimension] | Mapping[str, DimSpec],
                 gates: Mapping[str, tuple[str, Choice]] | None = None):
        gates = dict(gates or {})
        if isinstance(dims, Mapping):
            dims = [_dimension(name, spec, gates) for name, spec in dims.items()]
        self.dims: tuple[Dimension, ...] = tuple(dims)
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ArchError(f"search space has repeated dimension names: {names}")
        self._by_name = {d.name: d for d in self.dims}
        unknown = [name for name in gates if name not in self._by_name]
        if unknown:
            raise ArchError(f"gate for unknown dimension {unknown[0]!r}")
        self._check_gates()

    def _check_gates(self) -> None:
        """Every gate names a dimension of this space, and no chain of gates loops."""
        for d in self.dims:
            seen = {d.name}
            gate = d.active_if
            while gate is not None:
                by = gate[0]
                if by not in self._by_name:
                    raise ArchError(f"dimension {d.name!r} is gated by {by!r}, not a dimension of this space")
                if by in seen:
                    raise ArchError(f"dimension {d.name!r}: its gates form a loop through {by!r}")
                seen.add(by)
                gate = self._by_name[by].active_if

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
        """Number of encodings (archs as dicts); see `count(distinct=True)` for subnets."""
        return float(np.prod([len(d.choices) for d in self.dims], dtype=float))

    def count(self, *, distinct: bool = False) -> int:
        """Exact number of archs; `distinct=True` counts subnets (canonical archs) instead,
        by summing over each gating dimension's choices the product of what it switches on."""
        if not distinct:
            return math.prod(len(d.choices) for d in self.dims)
        children: dict[str, list[Dimension]] = {d.name: [] for d in self.dims}
        for d in self.dims:
            if d.active_if is not None:
                children[d.active_if[0]].append(d)

        def subtree(dim: Dimension) -> int:
            return sum(math.prod(subtree(c) if value >= c.active_if[1] else 1 for c in children[dim.name])
                       for value in dim.choices)

        return math.prod(subtree(d) for d in self.dims if d.active_if is None)

    @property
    def gated(self) -> dict[str, tuple[str, Choice]]:
        """Dimension -> (gating dimension, min value), for the dimensions that have a gate."""
        return {d.name: d.active_if for d in self.dims if d.active_if is not None}

    @property
    def num_choices(self) -> np.ndarray:
        """Choices per dimension, as optimizer upper bounds (+1)."""
        return np.array([len(d.choices) for d in self.dims], dtype=np.int64)

    # -- archs -----------------------------------------------------------------------------
    def sample(self, seed_or_rng: int | random.Random | np.random.Generator | None = None) -> Arch:
        """A random canonical arch, each dimension uniform (OFA's sampling); an int seed gives
        the same arch every time."""
        rng = seed_or_rng
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(None if rng is None else int(rng))
        if isinstance(rng, random.Random):
            return self.canonical({d.name: rng.choice(d.choices) for d in self.dims})
        return self.canonical({d.name: d.choices[int(rng.integers(len(d.choices)))] for d in self.dims})

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

    def is_active(self, arch: Mapping[str, Any], dim: str) -> bool:
        """Whether dimension `dim` affects the subnet `arch` describes."""
        d = self._by_name[dim]
        if d.active_if is None:
            return True
        by, at = d.active_if
        return self.is_active(arch, by) and arch[by] >= at

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """The arch with every inactive dimension at its first choice: one subnet, one arch."""
        out = self.validate(arch)
        for d in self.dims:  # is_active looks at gates' activity, not their values: any order
            if d.active_if is not None and not self.is_active(out, d.name):
                out[d.name] = d.choices[0]
        return out

    def canonical_json(self, arch: Mapping[str, Any]) -> str:
        """JSON of the canonical arch: sorted keys, no spaces; what tables store."""
        return json.dumps(self.canonical(arch), sort_keys=True, separators=(",", ":"))

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """The id of the subnet: a hash of the canonical arch, so encodings that differ only in
        inactive dimensions share it."""
        return arch_id_of_json(self.canonical_json(arch))

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
        """Normalised encoding in [0, 1]: numeric dims by value range, others by index;
        inactive dims are 0 (as in the MoS reference's fine-grained encoding)."""
        arch = self.validate(arch)
        out = np.empty(len(self.dims), dtype=np.float32)
        for j, d in enumerate(self.dims):
            value = arch[d.name]
            if not self.is_active(arch, d.name):
                out[j] = 0.0
                continue
            if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices):
                lo, hi = float(min(d.choices)), float(max(d.choices))
                out[j] = 0.0 if hi == lo else (float(value) - lo) / (hi - lo)
            else:
                n = len(d.choices)
                out[j] = 0.0 if n == 1 else d.index(value) / (n - 1)
        return out

    def one_hot(self, arch: Mapping[str, Any]) -> np.ndarray:
        """One block of indicators per dimension; an inactive dimension's block is all zero."""
        arch = self.validate(arch)
        idx = self.encode(arch)
        out = np.zeros(int(self.num_choices.sum()), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(self.num_choices)[:-1]])
        active = np.array([self.is_active(arch, d.name) for d in self.dims])
        out[(offsets + idx)[active]] = 1.0
        return out

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, list[Choice] | dict[str, Any]]:
        """Plain choice lists; a gated dimension as `{"choices": [...], "active_if": [dim, at]}`."""
        return {d.name: list(d.choices) if d.active_if is None
                else {"choices": list(d.choices), "active_if": list(d.active_if)}
                for d in self.dims}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        return cls(json.loads(text))

    def fingerprint(self) -> str:
        """Short hash of the dimensions and their choices: what weights and checkpoints depend
        on. Gates come from the family's code, so spaces before and after gates share it."""
        plain = {d.name: list(d.choices) for d in self.dims}
        return hashlib.sha1(json.dumps(plain, separators=(",", ":")).encode()).hexdigest()[:12]


def arch_id_of_json(canonical_json: str) -> str:
    """The arch_id of an arch already in canonical JSON form."""
    return hashlib.sha1(canonical_json.encode()).hexdigest()[:12]
