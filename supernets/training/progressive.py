"""OFA progressive shrinking (Cai et al. 2020): release the elastic dimensions phase by phase.

Phase 0 trains the largest subnet only. Each later phase releases one group of dimensions
(OFA's order: kernel, depth, expand, then width): its members sample the released groups
uniformly and keep every other dimension at its maximum, and distil from the largest. The
phase is a pure function of the epoch, so a run resumed in phase 2 samples phase 2's subspace.
Dimensions outside the three groups (the input resolution) are released with the first
elastic phase: OFA samples the image size throughout shrinking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nasbench_core.errors import UserError
from supernets.space import Arch, SearchSpace
from supernets.training.recipe_options import PS_GROUPS
from supernets.training.sampling import Member

GROUP_SUFFIXES = {
    "kernel": ("kernel",),
    "depth": ("depth",),
    "expand": ("expand", "mlp_ratio", "heads"),
    "width": ("width", "embed_dim"),
}
"""A dimension belongs to the group whose suffix ends its name (`block3.kernel` -> kernel;
ViT's heads and MLP ratios count as expand; OFA-ResNet's width multipliers and ViT's embed dim
as width, OFA-ResNet's last phase)."""


def dim_group(name: str) -> str | None:
    """The shrinking group of dimension `name`; None for the others (released first)."""
    return next((g for g, ends in GROUP_SUFFIXES.items() if name.endswith(ends)), None)


class ProgressiveShrinking:
    """The phases of one run: which dimensions each phase samples and its epochs."""

    def __init__(self, space: SearchSpace, options: Any, epochs: int):
        groups = {dim_group(d.name) for d in space if len(d.choices) > 1}
        phases = list(options.phases) if options.phases is not None else [
            g for g in PS_GROUPS if g in groups]
        lacking = [g for g in phases if g not in groups]
        if lacking:
            raise UserError(f"train.ofa_ps.phases: this space has no elastic {lacking[0]} "
                            f"dimension; use phases from {sorted(g for g in groups if g)}")
        self.space, self.phases = space, ["largest", *phases]
        if options.phase_epochs is not None and len(options.phase_epochs) != len(self.phases):
            raise UserError(f"train.ofa_ps.phase_epochs: expected {len(self.phases)} entries "
                            f"({', '.join(self.phases)}), got {options.phase_epochs}")
        lengths = options.phase_epochs or _even_split(epochs, len(self.phases))
        self.starts = list(np.cumsum([0, *lengths[:-1]]).astype(int))
        released: list[str] = []
        self.released: list[frozenset[str]] = []
        for i, phase in enumerate(self.phases):
            released += [d.name for d in space
                         if i > 0 and (dim_group(d.name) == phase
                                       or (i == 1 and dim_group(d.name) is None))]
            self.released.append(frozenset(released))

    def phase(self, epoch: int) -> int:
        """Index of the phase that epoch `epoch` (0-based) trains in; the last runs to the end."""
        return int(np.searchsorted(self.starts, epoch, side="right")) - 1

    def sample(self, rng: np.random.Generator, phase: int) -> Arch:
        """A canonical arch: the released dimensions uniform, the others at their maximum."""
        free = self.released[phase]
        arch = {d.name: d.choices[int(rng.integers(len(d.choices)))] if d.name in free
                else d.choices[-1] for d in self.space}
        return self.space.canonical(arch)

    def plan(self, num_random: int, seed: int, step: int, epoch: int) -> list[Member]:
        """The largest alone in phase 0; then the largest and `num_random` shrunk members."""
        phase = self.phase(epoch)
        members = [Member("largest", self.space.largest())]
        if phase == 0:
            return members
        rng = np.random.default_rng([int(seed), int(step)])
        return members + [Member("random", self.sample(rng, phase)) for _ in range(num_random)]


def _even_split(epochs: int, parts: int) -> Sequence[int]:
    """`epochs` split into `parts` near-equal runs (later phases get the remainder), each >= 1."""
    if epochs < parts:
        raise UserError(f"train.sampling=progressive: {parts} phases need at least {parts} "
                        f"epochs, got train.epochs={epochs}")
    return [epochs // parts + (i >= parts - epochs % parts) for i in range(parts)]
