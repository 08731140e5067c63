"""Optimizer base class and registry."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from nasbench_core.errors import UserError
from search.problem import SearchProblem

_REGISTRY: dict[str, type[Optimizer]] = {}


@dataclasses.dataclass
class Optimizer(ABC):
    """A search strategy. Subclasses are dataclasses whose fields are their settings.

    `max_stall`: consecutive steps that found no new arch before the run ends early, so a
    tiny or exhausted space cannot spin forever; a setting like any other.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    max_stall: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.max_stall, bool) or not isinstance(self.max_stall, int) or self.max_stall < 1:
            raise UserError(f"optimizer {self.name!r}: max_stall={self.max_stall!r} must be an integer >= 1")

    @abstractmethod
    def run(self, problem: SearchProblem, *, seed: int = 0, workdir: Path | None = None) -> None:
        """Spend `problem.evaluator.budget` true evaluations; `workdir` holds resumable state."""


def register_optimizer(name: str, help: str) -> Callable[[type[Optimizer]], type[Optimizer]]:
    def deco(cls: type[Optimizer]) -> type[Optimizer]:
        cls.name, cls.help = name, help
        _REGISTRY[name] = cls
        return cls

    return deco


def list_optimizers() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by registry name; unknown names or settings are one-line UserErrors."""
    if name not in _REGISTRY:
        raise UserError(f"unknown optimizer {name!r}; known: {', '.join(list_optimizers())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(kwargs) - fields)
    if bad:
        raise UserError(f"optimizer {name!r} has no setting {bad[0]!r}; settings: "
                        f"{', '.join(sorted(fields)) or '(none)'}")
    return cls(**kwargs)
