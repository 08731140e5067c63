"""Datasets by name with deterministic train/val splits, at a requested resolution and channels."""

from nasbench.data.bundle import DataBundle, load_dataset
from nasbench.data.sources import list_datasets

__all__ = ["DataBundle", "list_datasets", "load_dataset"]
