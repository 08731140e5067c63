"""`nasbench train`: placeholder until its capability lands."""

from __future__ import annotations

from pathlib import Path

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION, not_built


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Not built yet: says so and exits 2."""
    raise not_built("train", "issue 3, supernets")
