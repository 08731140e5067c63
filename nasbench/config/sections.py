"""Config sections shared by several commands."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from nasbench.config.loader import StrictModel

DatasetName = Literal[
    "digits", "mnist5k", "synthetic", "cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"
]


def default_results_root() -> Path:
    """`$NASBENCH_RESULTS`, else ./results: jobs on a cluster set it to keep runs outside their sandbox."""
    return Path(os.environ.get("NASBENCH_RESULTS", "results"))


MAX_SEED = 2**32 - 1
"""Seeds are what every RNG we seed takes (numpy's legacy seed is 32-bit)."""
MAX_NAME = 100
"""Run names stay well under file systems' 255-byte name limit, with room for suffixes."""
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_BATCH = 65536
"""Largest batch size: beyond it no model here fits in memory, and a typo is caught early."""
MAX_EPOCHS = 100_000
"""Most epochs of any training or fine-tuning (a typo such as 1e9 is refused, not started)."""
MAX_BUDGET = 1_000_000
"""Most evaluations in one search."""


def check_run_name(name: str | None, info: ValidationInfo) -> str | None:
    """A plain directory name: 1..MAX_NAME characters from A-Z a-z 0-9 . _ - (not . or ..).
    Configs stored by runs are read as they are (`context={"stored": True}`)."""
    if name is None or (info.context or {}).get("stored"):
        return name
    if len(name) > MAX_NAME:
        raise ValueError(f"a run name has at most {MAX_NAME} characters")
    if not RUN_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError("a run name takes only letters, digits, '.', '_' and '-' "
                         "(and is not '.' or '..')")
    return name


class RunConfig(StrictModel):
    """Where a run is written and how it is seeded."""

    name: str | None = None
    root: Path = Field(default_factory=default_results_root)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    _check_name = field_validator("name")(check_run_name)


class DataConfig(StrictModel):
    """A dataset by name, at a resolution and channel count the model wants."""

    name: DatasetName = "digits"
    root: Path | None = None
    download: bool = False
    resolution: int | None = Field(default=None, ge=4, le=1024)
    channels: int | None = Field(default=None, ge=1, le=4)
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    limit: int | None = Field(default=None, ge=1, le=10**9)
    num_workers: int = Field(default=0, ge=0, le=256)
    augment: bool = False
