"""`nasbench quickstart`: the whole pipeline on digits, on CPU, in a few minutes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from nasbench.commands.common import CONFIG_ARGUMENT, QUIET_OPTION, SET_OPTION
from nasbench.config import DataConfig, RunConfig, StrictModel, load_config


class QuickstartRun(RunConfig):
    name: str | None = "quickstart"


class QuickstartConfig(StrictModel):
    """Sizes of each step; the defaults finish in a few minutes on 2 CPU cores."""

    run: QuickstartRun = QuickstartRun()
    data: DataConfig = DataConfig(name="digits")
    family: str = "mbv3"
    epochs: int = Field(default=4, ge=1)
    latency_samples: int = Field(default=40, ge=10)
    search_budget: int = Field(default=40, ge=4)
    population: int = Field(default=12, ge=4)
    latency_budget_quantile: float = Field(default=0.5, gt=0, le=1)
    prune_sparsity: float = Field(default=0.5, ge=0, lt=1)
    finetune_epochs: int = Field(default=1, ge=0)


def command(
    config: Path | None = CONFIG_ARGUMENT,
    overrides: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train a supernet, measure latency and fit a predictor, search, export to ONNX, prune."""
    from nasbench.progress import set_quiet

    set_quiet(quiet)
    cfg = load_config(QuickstartConfig, config, overrides)
    from nasbench.pipelines.quickstart import run_quickstart

    run_quickstart(cfg)
