"""Elastic resolution in the data (`train.resolution_mode: data`), as Once-for-All does it.

OFA picks one image size per batch in the data loader (`MyRandomResizedCrop.sample_image_size`,
seeded by the batch index and the epoch), so every child of a step sees its batch cropped and
resized from the source image at that size. Here a step's batch comes at most three sizes, all
resampled from the source samples (antialiased), never from one another:

- the largest member at the space's largest resolution, the smallest at its smallest (the
  sandwich's bounds, as BigNAS trains them);
- every other member (random, uniform, a recipe's children) at ONE resolution per step, drawn
  from (seed, epoch, step in the epoch) like OFA's, so a resumed run draws the same sequence
  and every DDP worker the same size without talking.

`tensor` mode keeps the older behaviour: one batch at the largest resolution, each member's
input interpolated down to its arch's resolution inside the step (`prepare_input`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from supernets.space import SearchSpace
from supernets.training.sampling import Member

MODES = ("data", "tensor")
_STREAM = 0x5E5  # keeps these draws apart from the arch draws of `step_plan`


def resolution_choices(space: SearchSpace) -> list[int]:
    """The space's resolutions, ascending (empty: the space has no `resolution` dimension)."""
    if "resolution" not in space:
        return []
    return sorted(int(r) for r in space["resolution"].choices)


def step_resolution(choices: list[int], seed: int, epoch: int, step: int) -> int:
    """The one resolution of step `step` (counted in the epoch) of `epoch`: uniform over
    `choices`, a function of (seed, epoch, step) alone."""
    rng = np.random.default_rng([int(seed), _STREAM, int(epoch), int(step)])
    return int(choices[int(rng.integers(len(choices)))])


def step_resolutions(choices: list[int], seed: int, epoch: int, step: int) -> tuple[int, ...]:
    """Every resolution the step's batch is needed at, ascending: min, max and the step's."""
    return tuple(sorted({choices[0], choices[-1], step_resolution(choices, seed, epoch, step)}))


def member_resolution(role: str, choices: list[int], step_res: int) -> int:
    """The resolution a member of `role` trains at in data mode (see the module doc)."""
    if role == "largest":
        return choices[-1]
    if role == "smallest":
        return choices[0]
    return step_res


def with_step_resolution(members: list[Member], choices: list[int], step_res: int) -> list[Member]:
    """`members` with their archs' resolution set as data mode trains them."""
    if not choices:
        return members
    return [replace(m, arch={**m.arch, "resolution": member_resolution(m.role, choices, step_res)})
            for m in members]


def member_input(x: Any, arch: Mapping[str, Any]) -> Any:
    """The batch a member sees: its arch's resolution out of a data-mode batch ({size: tensor});
    a plain tensor as it is (the step interpolates it, tensor mode)."""
    if not isinstance(x, Mapping):
        return x
    return x[int(arch["resolution"])] if "resolution" in arch else x[max(x)]
