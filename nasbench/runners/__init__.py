"""Runners: one module per job (train, search, prune, export, latency, quickstart).

Each owns its pydantic config and a `run`-style function returning a `Run`; the CLI commands,
the public `nasbench.*` functions, the benchmarks and the tests all drive these, so every job
has exactly one implementation. `config_model(command)` maps a run's command to its config
model, which is how `Run.config` gives a typed config back.
"""

from __future__ import annotations

from pydantic import BaseModel

from nasbench_core.errors import RunError


def config_model(command: str) -> type[BaseModel]:
    """The config model of runs made by `command` (`train`, `search`, ...)."""
    from nasbench.runners import latency, prune, quickstart, search, train

    models: dict[str, type[BaseModel]] = {
        "train": train.TrainConfig, "search": search.SearchConfig, "prune": prune.PruneConfig,
        "latency": latency.LatencyMeasureConfig, "quickstart": quickstart.QuickstartConfig,
    }
    if command not in models:
        raise RunError(f"runs of command {command!r} have no config model; known: {', '.join(models)}")
    return models[command]
