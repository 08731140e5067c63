"""Optimizer base class and registry."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pydantic
import pydantic.dataclasses

from nasbench_core.registry import Registry
from search.problem import SearchProblem

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer", option_word="setting")

settings_dataclass = functools.partial(
    pydantic.dataclasses.dataclass, config=pydantic.ConfigDict(strict=True, extra="forbid"))
"""An optimizer's class decorator: its fields are its settings, checked by type and range."""

MAX_COUNT = 1_000_000
"""The most a population, batch, pool or stall count may be: the largest search budget
(nasbench's `budget` bound), so a typo such as 10**12 is one line, not an endless allocation."""

PositiveInt = Annotated[int, pydantic.Field(ge=1, le=MAX_COUNT)]


@settings_dataclass
class Optimizer(ABC):
    """A search strategy. Subclasses are settings dataclasses whose fields are their settings;
    the class is its own options model in the registry, so settings are checked by value.

    `max_stall`: consecutive steps that found no new arch before the run ends early, so a
    tiny or exhausted space cannot spin forever; a setting like any other.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    max_stall: PositiveInt = 50

    @abstractmethod
    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        """Spend `problem.evaluator.budget` true evaluations; `workdir` holds resumable state."""


def register_optimizer(name: str, help: str) -> Callable[[type[Optimizer]], type[Optimizer]]:
    def deco(cls: type[Optimizer]) -> type[Optimizer]:
        cls.name, cls.help = name, help
        return OPTIMIZERS.register(name, options=cls, help=help)(cls)

    return deco


def list_optimizers() -> list[str]:
    return OPTIMIZERS.list()


def create(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by registry name with its settings checked by value; unknown names, unknown
    settings and bad values are one-line UserErrors."""
    return OPTIMIZERS.validate(name, kwargs)
