"""The CLI's view of user errors (defined in nasbench_core so library packages can raise them)."""

from nasbench_core.errors import (
    ArchError,
    CheckpointError,
    ConfigError,
    DataError,
    RunError,
    UserError,
)

__all__ = [
    "ArchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "RunError",
    "UserError",
]
