"""Pruning mistakes a user can fix (bad sparsity, patterns, mask files); CLI prints one line."""

from nasbench_core.errors import UserError


class PruneError(UserError):
    """A pruning request does not fit the model: bad sparsity, pattern, or mask shapes."""
