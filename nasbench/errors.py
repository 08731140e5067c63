"""The CLI's view of user errors (defined in nasbench_core so library packages can raise them)."""

from nasbench_core.errors import (
    ArchError,
    CheckpointError,
    ConfigError,
    DataError,
    RunError,
    UserError,
)


class NotBuiltError(UserError):
    """A subcommand whose capability has not been built yet; it says so instead of pretending."""


__all__ = [
    "ArchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NotBuiltError",
    "RunError",
    "UserError",
]
