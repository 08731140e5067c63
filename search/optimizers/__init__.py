"""Optimizer registry: `list_optimizers()`, `create(name, **kwargs)`, `@register_optimizer`.

Every optimizer runs on a `SearchProblem` until its evaluator's budget of true evaluations is
spent; the evaluations table, not the optimizer state, is the record of what was found.
"""

from search.optimizers import linas, optuna_search, pymoo_search, random_search  # noqa: F401
from search.optimizers.base import Optimizer, create, list_optimizers, register_optimizer

__all__ = ["Optimizer", "create", "list_optimizers", "register_optimizer"]
