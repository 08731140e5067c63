"""`nasbench quickstart`: the part of the pipeline that exists, on digits, on CPU."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION
from nasbench.config import DataConfig, RunConfig, StrictModel, load_config


class QuickstartRun(RunConfig):
    name: str | None = "quickstart"


class QuickstartData(DataConfig):
    resolution: int | None = Field(default=16, ge=4, le=1024)


class QuickstartConfig(StrictModel):
    run: QuickstartRun = QuickstartRun()
    data: QuickstartData = QuickstartData()
    epochs: int = Field(default=4, ge=1)
    lr: float = Field(default=0.05, gt=0)
    width: int = Field(default=16, ge=1)


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train a small CNN on digits and write a run; later steps join as they are built."""
    from nasbench.progress import set_quiet

    set_quiet(quiet)
    cfg = load_config(QuickstartConfig, config, overrides)
    from nasbench.pipelines.quickstart import run_quickstart

    run_quickstart(cfg)
