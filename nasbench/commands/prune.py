"""`nasbench prune CONFIG [--set k=v] [--resume RUN]`: the prune runner from the shell."""

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
    """Prune a model with any registered pruner, fine-tune it and export it to ONNX; `--resume`
    continues a killed lottery run from its last finished level."""
    from nasbench.progress import set_quiet
    from nasbench.runners import prune
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    if resume is not None:
        resume, config = resume_target("prune", resume, config)
    prune.run(resolve(prune.PruneConfig, config, cli_overrides=overrides), resume=resume)
