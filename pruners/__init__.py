"""Pruning for any PyTorch model: global magnitude, lottery tickets, layer-adaptive DP, baselines,
N:M masks, and structured (channel) pruning that physically shrinks the model.

Masks are `{parameter name: bool keep-mask}` applied in `torch.nn.utils.prune` form.
`prune(model, method, sparsity, **kw)` is the front door for masks, `shrink(model, method,
amount, example_input=...)` for channels; `list_pruners(kind)` names the methods of each kind.
"""

from pruners import methods as _methods  # noqa: F401  (registers the pruners)
from pruners import n_m as _n_m  # noqa: F401  (registers "n_m")
from pruners import shrink_dp as _shrink_dp  # noqa: F401  (registers structured "layer_dp")
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
from pruners.n_m import n_m_mask, to_semi_structured
from pruners.registry import (
    KINDS,
    NEEDS,
    PRUNERS,
    check_prune,
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
from pruners.structured import SHRINKERS, ChannelPlan, apply_plan, plan_channels, shrink, validate_shrink_options

__all__ = [
    "KINDS",
    "NEEDS",
    "SHRINKERS",
    "ChannelPlan",
    "apply_plan",
    "n_m_mask",
    "plan_channels",
    "shrink",
    "to_semi_structured",
    "validate_shrink_options",
    "PRUNERS",
    "pruner_entry",
    "validate_prune_options",
    "check_prune",
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
