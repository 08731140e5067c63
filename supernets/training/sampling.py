"""Which subnets one training step trains, drawn from (seed, global step) alone.

Every DDP/Ray worker computes the same plan for the same step without communicating, and a
resumed run draws exactly the archs the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supernets.space import Arch, SearchSpace


@dataclass(frozen=True)
class Member:
    """One subnet of a step; `role` is largest, smallest, random (distilled) or uniform."""

    role: str
    arch: Arch


def step_plan(
    space: SearchSpace, sampling: str, num_random: int, seed: int, step: int
) -> list[Member]:
    """The sandwich (largest first, it is the teacher) or the single uniform member of a step."""
    rng = np.random.default_rng([int(seed), int(step)])
    if sampling == "uniform":
        return [Member("uniform", space.sample(rng))]
    members = [Member("largest", space.largest()), Member("smallest", space.smallest())]
    members += [Member("random", space.sample(rng)) for _ in range(num_random)]
    return members
