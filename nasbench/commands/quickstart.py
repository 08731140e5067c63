"""`nasbench quickstart [--set k=v]`: the whole pipeline on digits, on CPU, in a few minutes."""

from __future__ import annotations

from pathlib import Path

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train a supernet, measure latency and fit a predictor, search, export to ONNX, prune."""
    from nasbench.progress import set_quiet
    from nasbench.runners import quickstart
    from nasbench.runners.config import resolve

    set_quiet(quiet)
    quickstart.run(resolve(quickstart.QuickstartConfig, config, cli_overrides=overrides))
