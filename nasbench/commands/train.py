"""`nasbench train CONFIG [--set k=v] [--resume RUN]`: the train runner from the shell."""

from __future__ import annotations

from pathlib import Path

from nasbench.commands.common import (
    CONFIG_ARGUMENT,
    QUIET_OPTION,
    RESUME_OPTION,
    SET_OPTION,
    resume_target,
)


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    resume: Path | None = RESUME_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train a supernet with the BigNAS sandwich rule (or uniform sampling); see examples/."""
    from nasbench.progress import set_quiet
    from nasbench.runners import train
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    if resume is not None:
        resume, config = resume_target("train", resume, config)
    train.run(resolve(train.TrainConfig, config, cli_overrides=overrides), resume=resume)
