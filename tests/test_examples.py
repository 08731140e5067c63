"""Every example config under examples/ validates against its command's config model."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasbench.runners import config_model
from nasbench.runners.config import resolve

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
COMMANDS = {"train", "search", "prune"}
REQUIRED = {"prune_exported_subnet.yaml": ["model.arch_id=0123456789ab"]}  # given with --set


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path: Path) -> None:
    model = config_model(path.name.split("_", 1)[0])
    assert isinstance(resolve(model, path, cli_overrides=REQUIRED.get(path.name, ())), model)


def test_every_command_has_an_example() -> None:
    assert {p.name.split("_", 1)[0] for p in EXAMPLES} == COMMANDS
