"""Pruning for any PyTorch model: global magnitude, lottery tickets, layer-adaptive DP, baselines.

Masks are `{parameter name: bool keep-mask}` applied in `torch.nn.utils.prune` form.
`prune(model, method, sparsity, **kw)` is the front door; `list_pruners()` names the methods.
"""

from pruners import methods as _methods  # noqa: F401  (registers the pruners)
from pruners.errors import PruneError
from pruners.lottery import Span, lottery_control, lottery_ticket, parse_span
from pruners.magnitude import cubic_schedule, global_magnitude, gradual_magnitude
from pruners.masks import (
    MaskKeeper,
    apply_masks,
    get_masks,
    load_masks,
    make_permanent,
    save_masks,
    validate_masks,
)
from pruners.registry import (
    NEEDS,
    PRUNERS,
    get_pruner,
    list_pruners,
    prune,
    prune_permanent,
    pruner_entry,
    register_pruner,
    validate_prune_options,
)
from pruners.report import sparsity_report
from pruners.selection import Target, select_targets

__all__ = [
    "NEEDS",
    "PRUNERS",
    "pruner_entry",
    "validate_prune_options",
    "MaskKeeper",
    "PruneError",
    "Span",
    "Target",
    "apply_masks",
    "cubic_schedule",
    "get_masks",
    "get_pruner",
    "global_magnitude",
    "gradual_magnitude",
    "list_pruners",
    "load_masks",
    "lottery_control",
    "lottery_ticket",
    "make_permanent",
    "parse_span",
    "prune",
    "prune_permanent",
    "register_pruner",
    "save_masks",
    "validate_masks",
    "select_targets",
    "sparsity_report",
]
