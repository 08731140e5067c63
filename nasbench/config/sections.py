"""Config sections shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from nasbench.config.loader import StrictModel

DatasetName = Literal[
    "digits", "mnist5k", "synthetic", "cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"
]


def default_results_root() -> Path:
    """`$NASBENCH_RESULTS`, else ./results: jobs on a cluster set it to keep runs outside their sandbox."""
    return Path(os.environ.get("NASBENCH_RESULTS", "results"))


class RunConfig(StrictModel):
    """Where a run is written and how it is seeded."""

    name: str | None = None
    root: Path = Field(default_factory=default_results_root)
    seed: int = 0


class DataConfig(StrictModel):
    """A dataset by name, at a resolution and channel count the model wants."""

    name: DatasetName = "digits"
    root: Path | None = None
    download: bool = False
    resolution: int | None = Field(default=None, ge=4, le=1024)
    channels: int | None = Field(default=None, ge=1, le=4)
    batch_size: int = Field(default=64, ge=1)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    limit: int | None = Field(default=None, ge=1)
    num_workers: int = Field(default=0, ge=0)
    augment: bool = False
