"""A change stamp for cached derived weights (transformed kernels, folded MoS mixtures).

A tensor's `_version` counts in-place writes through autograd's view tracking, but fused
optimizer kernels (`AdamW(fused=True)`) update parameters without bumping it. A global
optimizer step hook counts every step of every optimizer, so a cache keyed on both sees
optimizer updates as well as in-place edits (re-ordering, `load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_steps = 0


def _count_step(*_: object) -> None:
    global _steps
    _steps += 1


register_optimizer_step_post_hook(_count_step)


def weights_stamp(tensors: Iterable[torch.Tensor | None]) -> tuple[int, ...]:
    """Changes whenever any of `tensors` is written in place or any optimizer steps."""
    return (_steps, *(t._version for t in tensors if t is not None))
