"""Every example config under examples/ validates against its command's config model."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasbench.commands.prune import PruneConfig
from nasbench.commands.search import SearchConfig
from nasbench.commands.train import TrainConfig
from nasbench.config import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
MODELS = {"train": TrainConfig, "search": SearchConfig, "prune": PruneConfig}
REQUIRED = {"prune_exported_subnet.yaml": ["model.arch_id=0123456789ab"]}  # given with --set


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path: Path) -> None:
    model = MODELS[path.name.split("_", 1)[0]]
    assert isinstance(load_config(model, path, REQUIRED.get(path.name, ())), model)


def test_every_command_has_an_example() -> None:
    assert {p.name.split("_", 1)[0] for p in EXAMPLES} == set(MODELS)
