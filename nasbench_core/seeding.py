"""One call seeds every random source, so the same seed gives the same result on CPU."""

from __future__ import annotations

import os
import random

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
