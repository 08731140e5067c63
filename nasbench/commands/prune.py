"""`nasbench prune CONFIG [--set k=v]`: the prune runner from the shell."""

from __future__ import annotations

from pathlib import Path

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Prune a model with any registered pruner, fine-tune it and export it to ONNX."""
    from nasbench.progress import set_quiet
    from nasbench.runners import prune
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    prune.run(resolve(prune.PruneConfig, config, cli_overrides=overrides))
