"""Shared ground for every nasbench package: user errors, the registry, seeding, atomic writes.

It sits below `supernets`, `pruners`, `search` and `cuda_ext` so that library code can raise
the same `UserError` family the CLI turns into a one-line message and exit status 2.
"""

from nasbench_core.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from nasbench_core.errors import (
    ArchError,
    CheckpointError,
    ConfigError,
    DataError,
    RunError,
    UserError,
)
from nasbench_core.registry import Entry, Registry
from nasbench_core.seeding import seed_everything, torch_generator

__all__ = [
    "ArchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Entry",
    "Registry",
    "RunError",
    "UserError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "seed_everything",
    "torch_generator",
]
