"""One call seeds every random source, so the same seed gives the same result on CPU."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def torch_generator(seed: int):
    """A private torch.Generator, for samplers and loaders that must not share global state."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with Python, NumPy and torch seeded by `seed`, then give the caller its own
    random states back: a stage (a lottery level, a fine-tune) becomes a function of its seed,
    whatever ran before it, so a resumed run replays it exactly."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed % 2**63)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
