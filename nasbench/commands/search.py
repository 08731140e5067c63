"""`nasbench search CONFIG [--set k=v] [--resume RUN]`: the search runner from the shell."""

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
    """Search a supernet for Pareto-optimal subnets; writes evaluations, pareto table and plot."""
    from nasbench.progress import set_quiet
    from nasbench.runners import search
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    if resume is not None:
        resume, config = resume_target("search", resume, config)
    search.run(resolve(search.SearchConfig, config, cli_overrides=overrides), resume=resume)
