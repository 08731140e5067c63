"""Structured (channel) pruning that physically shrinks a model: `shrink(model, method, amount)`.

Torch-Pruning's DependencyGraph finds which channels are coupled (a conv's outputs, its BN, the
residual adds they meet, the next layers' inputs, a flatten into a Linear) so that a channel is
removed everywhere at once; the allocation (how many channels each coupled group loses) and the
channel importance are ours:

- importance of a channel = Σ over every coupled Conv/Linear slice (output rows and input
  columns, depthwise kernels included) and BN/LayerNorm scale of |w|^p, p = 1 (`l1`) or
  p = 2 (`l2`, the group's squared L2 norm); Torch-Pruning's `MagnitudeImportance(p,
  group_reduction="sum", normalizer=None)` except that it skips depthwise kernels;
- `uniform`: each group loses the same fraction (largest-remainder rounding to the exact total);
- `global_magnitude`: one ranking of all channels, each group's scores divided by its mean
  (`normalize`), else a group with many coupled weights would never lose a channel;
- `layer_dp`: output distortion measured per group and amount, then the layer-DP solve
  (`pruners.layer_dp.solve_dp`) — see `pruners.shrink_dp`. Its `budget` says what `amount`
  counts: `channels` (default), or `params` / `macs`, the fraction of the prunable parameters
  (or multiply-accumulates) removed, each channel costing what removing it really removes
  (`pruners.shrink_costs`).

`amount` is otherwise the fraction of the prunable channels removed, exactly round(amount·C) of
them; within a group the least important go first (ties: lower channel index first). Every
group keeps at least `min_keep` channels (a count, or a fraction of the group, rounded up).
Groups that feed the model's output stay whole (the classes do not change), as do groups
touching a grouped (non-depthwise) convolution.

`round_to=r` (None or 1: off): a pruned group keeps a multiple of r channels, at least r (and
its min_keep), or stays whole (`pruners.round_to`: odd counts make onnxruntime slower than the
dense model). The total removed is then the grid's closest to round(amount·C) (ties: the
fewer; beyond the grid's reach, its most, since a small group cannot lose a multiple):
`uniform` and `global_magnitude` compute their exact counts as above (under the grid's caps)
and round each group down or up to its grid, choosing the roundings whose total is closest to
the target (then the least squared change); `layer_dp` optimises over the grid itself (its
`params` / `macs` budget is still met: at least the target, else an error).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nasbench_core.registry import Registry
from pruners.allocation import largest_remainder
from pruners.errors import PruneError
from pruners.masks import live_masks, make_permanent
from pruners.options import Count, PrunerOptions, Seed
from pruners.round_to import removal_grid, round_counts

if TYPE_CHECKING:  # torch_pruning imports timm (seconds): only the functions that trace load it
    import torch_pruning as tp

Allocator = Callable[..., list[int]]
SHRINKERS: Registry[Allocator] = Registry("structured pruning method", error=PruneError)
"""Entries: `fn(model, groups, n_remove, options, *, caps, grids, **needs) -> channels removed
per group`, each one of its group's `grids` (the counts `round_to` allows; caps: their last)."""

SHRINK_NEEDS = ("data",)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


class ShrinkOptions(PrunerOptions):
    importance: Literal["l1", "l2"] = "l2"
    min_keep: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0.0, lt=1.0)] = 1
    ignore: list[str] = Field(default_factory=list)  # module-name globs whose channels stay
    round_to: Annotated[int, Field(ge=1, le=1024)] | None = None  # kept counts: multiples of it


class GlobalShrinkOptions(ShrinkOptions):
    normalize: bool = True


class DPShrinkOptions(ShrinkOptions):
    """`budget`: `channels` removes round(amount·C) channels; `params` / `macs` remove at least
    amount × the prunable parameters / MACs (and less than one more channel's worth)."""

    budget: Literal["channels", "params", "macs"] = "channels"
    num_samples: Count = 256
    num_amounts: Annotated[int, Field(ge=2, le=10_001)] = 21
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    seed: Seed = 0


@dataclass
class ChannelGroup:
    """Coupled channels: removing root channel r removes, in each module of `outputs`, its
    output channels `outputs[name][r]` (several for a flatten), and in each module of `inputs`
    the input channels `inputs[name][r]` (the consumers). `scores[r]` is the channel importance."""

    root: str
    channels: int
    scores: torch.Tensor
    outputs: dict[str, dict[int, list[int]]] = field(repr=False)
    inputs: dict[str, dict[int, list[int]]] = field(default_factory=dict, repr=False)


@dataclass
class ChannelPlan:
    """Which root channels each group loses; `to_json` is enough to redo it (`apply_plan`)."""

    groups: list[ChannelGroup]
    removed: list[list[int]]
    method: str = ""
    amount: float = 0.0
    budget: str = "channels"  # what `amount` is a fraction of (`DPShrinkOptions.budget`)
    round_to: int | None = None  # kept counts are multiples of it (`ShrinkOptions.round_to`)

    @property
    def channels(self) -> int:
        return sum(g.channels for g in self.groups)

    @property
    def pruned(self) -> int:
        return sum(len(r) for r in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "amount": self.amount, "budget": self.budget,
                "round_to": self.round_to, "channels": self.channels,
                "pruned": self.pruned,
                "groups": [{"root": g.root, "channels": g.channels, "removed": r}
                           for g, r in zip(self.groups, self.removed, strict=True)]}


def register_shrinker(name: str, *, options: type[ShrinkOptions] = ShrinkOptions,
                      needs: Sequence[str] = (), check: Callable[..., None] | None = None
                      ) -> Callable[[Allocator], Allocator]:
    """`check(model, groups, amount, options, caps=, example_input=)`: the method's own
    feasibility test, run before any allocation (and by `check_shrink`); raises PruneError."""
    return SHRINKERS.register(name, options=options, needs=tuple(needs), check=check)


def validate_shrink_options(method: str, options: dict[str, Any], *, where: str = "kwargs") -> dict[str, Any]:
    """Check `method` and its options by value before any work (a config's `prune.kwargs`)."""
    given = [key for key in options if key in SHRINK_NEEDS or key == "example_input"]
    if given:
        SHRINKERS.entry(method)
        raise PruneError(f"{where}.{given[0]}: {method!r} gets {given[0]!r} from the runner, not from a config")
    SHRINKERS.validate(method, options, where=where)
    return dict(options)


def check_amount(amount: Any) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise PruneError(f"amount={amount!r} must be a fraction of channels in [0, 1)")
    return float(amount)


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace `model` (in eval mode, so BN statistics stay as they are) into Torch-Pruning's graph."""
    import torch_pruning as tp

    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                         verbose=False)
    finally:
        model.train(was_training)


def _slice_scores(layer: nn.Module, out: bool, p: int) -> torch.Tensor | None:
    """|w|^p summed per channel of `layer` on its output (`out`) or input side."""
    if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
        w = layer.weight.detach().float().abs().pow(p)
        dim = 0 if out != getattr(layer, "transposed", False) else 1
        return w.transpose(0, dim).flatten(1).sum(1)
    if isinstance(layer, _NORMS) and out and getattr(layer, "weight", None) is not None:
        return layer.weight.detach().float().abs().pow(p).flatten()
    return None


def _grouped_conv(layer: nn.Module) -> bool:
    groups = getattr(layer, "groups", 1)
    return isinstance(layer, nn.modules.conv._ConvNd) and groups > 1 and not (
        groups == layer.in_channels == layer.out_channels)


def check_ignore(model: nn.Module, patterns: Sequence[str]) -> None:
    """Each `ignore` glob must name a module: a typo is a mistake, not a no-op."""
    names = [n for n, _ in model.named_modules()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise PruneError(f"ignore pattern {pattern!r} matches no module; modules are e.g. {names[1:5]}")


def channel_groups(model: nn.Module, DG: tp.DependencyGraph, importance: str = "l2",
                   ignore: Sequence[str] = ()) -> list[ChannelGroup]:
    """The prunable coupled-channel groups of a traced model, in the graph's order, scored."""
    check_ignore(model, ignore)
    names = {m: n for n, m in model.named_modules()}
    p = 1 if importance == "l1" else 2
    out: list[ChannelGroup] = []
    for group in DG.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        root = group[0].dep.target.module
        channels = DG.get_out_channels(root)
        scores = torch.zeros(channels)
        outputs: dict[str, dict[int, list[int]]] = {}
        inputs: dict[str, dict[int, list[int]]] = {}
        keep_whole = False
        for item in group:
            node, layer = item.dep.target, item.dep.target.module
            is_out = DG.is_out_channel_pruning_fn(item.dep.handler)
            if is_out and not node.outputs:
                keep_whole = True  # its channels are the model's output
            if _grouped_conv(layer) or any(r is None for r in item.root_idxs):
                keep_whole = True
            name = names.get(layer)
            if name is None:  # a traced op (add, flatten, cat), not a module with weights
                continue
            if is_out and any(fnmatch.fnmatchcase(name, pat) for pat in ignore):
                keep_whole = True
            per_root = (outputs if is_out else inputs).setdefault(name, {})
            for idx, r in zip(item.idxs, item.root_idxs, strict=True):
                per_root.setdefault(int(r), []).append(int(idx))
            local = _slice_scores(layer, is_out, p)
            if local is not None:
                scores.index_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long),
                                  local[torch.as_tensor(item.idxs, dtype=torch.long)].cpu())
        if not keep_whole:
            out.append(ChannelGroup(names[root], channels, scores, outputs, inputs))
    return out


def least_important(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` lowest-scored channels, ties to the lower index, sorted."""
    order = torch.sort(scores, stable=True).indices
    return sorted(int(i) for i in order[:count])


def keep_count(min_keep: int | float, channels: int) -> int:
    """Channels a group keeps at least: a count, or ⌈fraction·C⌉ (at least 1)."""
    return min_keep if isinstance(min_keep, int) else max(1, math.ceil(min_keep * channels))


def _budget(o: ShrinkOptions) -> str:
    return getattr(o, "budget", "channels")


def rounded(o: ShrinkOptions) -> bool:
    """Whether kept counts are restricted to multiples (`round_to` > 1)."""
    return (o.round_to or 1) > 1


def _groups(model: nn.Module, method: str, amount: float, example_input: torch.Tensor,
            o: ShrinkOptions) -> tuple[list[ChannelGroup], int, list[np.ndarray]]:
    """The scored groups, the channel count to remove and the counts each group may lose
    (`pruners.round_to.removal_grid`; its last is the group's cap), or a PruneError (from the
    method's own `check` too)."""
    groups = channel_groups(model, dependency_graph(model, example_input), o.importance, o.ignore)
    total = sum(g.channels for g in groups)
    n_remove = round(amount * total)
    grids = [removal_grid(g.channels, keep_count(o.min_keep, g.channels), o.round_to) for g in groups]
    caps = [int(grid[-1]) for grid in grids]
    if _budget(o) == "channels" and n_remove > sum(caps) and not rounded(o):  # rounded: the closest
        raise PruneError(f"cannot remove {n_remove} of {total} channels keeping min_keep={o.min_keep} "
                         f"per group (at most {sum(caps)})")
    check = SHRINKERS.entry(method).meta["check"]
    if check is not None:
        check(model, groups, amount, o, caps=caps, example_input=example_input)
    return groups, n_remove, grids


def check_shrink(model: nn.Module, method: str, amount: float, *, example_input: torch.Tensor,
                 **options: Any) -> None:
    """What `plan_channels` checks before it allocates (method, options, amount, the groups'
    room), touching nothing: a runner calls it before it creates a run directory."""
    _groups(model, method, check_amount(amount), example_input, SHRINKERS.validate(method, options))


def plan_channels(model: nn.Module, method: str, amount: float, *, example_input: torch.Tensor,
                  data: Any = None, **options: Any) -> ChannelPlan:
    """Which channels `method` removes at `amount`; `model` is not changed."""
    amount = check_amount(amount)
    entry = SHRINKERS.entry(method)
    needs = {"data": data} if "data" in entry.meta["needs"] else {}
    if data is not None and not needs:
        raise PruneError(f"structured method {method!r} uses no calibration data")
    o = SHRINKERS.validate(method, options)
    groups, n_remove, grids = _groups(model, method, amount, example_input, o)
    counts = entry.obj(model, groups, n_remove, o, caps=[int(g[-1]) for g in grids], grids=grids,
                       example_input=example_input, amount=amount, **needs)
    exact = rounded(o) or _budget(o) != "channels" or sum(counts) == n_remove
    if not exact or any(c not in grid for c, grid in zip(counts, grids, strict=True)):
        raise PruneError(f"internal: {method!r} allocated {counts} channels, not {n_remove} on the "
                         f"allowed counts")
    removed = [least_important(g.scores, c) for g, c in zip(groups, counts, strict=True)]
    return ChannelPlan(groups, removed, method, amount, _budget(o), o.round_to)


def apply_plan(model: nn.Module, plan: ChannelPlan | dict[str, Any], *,
               example_input: torch.Tensor) -> nn.Module:
    """Remove the plan's channels from `model` in place (Torch-Pruning does the surgery)."""
    spec = plan.to_json() if isinstance(plan, ChannelPlan) else plan
    DG = dependency_graph(model, example_input)
    modules = dict(model.named_modules())
    for g in spec["groups"]:
        if not g["removed"]:
            continue
        root = modules.get(g["root"])
        if root is None or DG.get_out_channels(root) != g["channels"]:
            raise PruneError(f"channel plan does not fit this model: group {g['root']!r}")
        handler = DG.get_pruner_of_module(root).prune_out_channels
        DG.get_pruning_group(root, handler, list(g["removed"])).prune()
    return model


def shrink(model: nn.Module, method: str, amount: float, *, example_input: torch.Tensor,
           **kwargs: Any) -> nn.Module:
    """A physically smaller copy of `model` with round(amount·C) of its prunable channels
    removed by `method` (`list_pruners(kind="structured")`); `model` is left as it was.

    Unstructured masks on `model` are baked in first (the copy has plain weights). Options:
    `importance`, `min_keep`, `ignore`, and the method's own (`pruners.structured`).
    """
    return shrink_with_plan(model, method, amount, example_input=example_input, **kwargs)[0]


def shrink_with_plan(model: nn.Module, method: str, amount: float, *, example_input: torch.Tensor,
                     **kwargs: Any) -> tuple[nn.Module, ChannelPlan]:
    """`shrink`, and the plan it applied (save `plan.to_json()` to redo it with `apply_plan`)."""
    out = copy.deepcopy(model)
    if live_masks(out):
        make_permanent(out)
    plan = plan_channels(out, method, amount, example_input=example_input, **kwargs)
    return apply_plan(out, plan, example_input=example_input), plan


@register_shrinker("uniform")
def _uniform(model: nn.Module, groups: Sequence[ChannelGroup], n_remove: int, o: ShrinkOptions, *,
             caps: list[int], grids: list[np.ndarray], **_: Any) -> list[int]:
    total = sum(g.channels for g in groups)
    ideal = [n_remove * g.channels / total if total else 0.0 for g in groups]
    counts = largest_remainder(ideal, min(n_remove, sum(caps)), caps)  # less: only when rounded
    return round_counts(counts, grids, n_remove) if rounded(o) else counts


@register_shrinker("global_magnitude", options=GlobalShrinkOptions)
def _global(model: nn.Module, groups: Sequence[ChannelGroup], n_remove: int,
            o: GlobalShrinkOptions, *, caps: list[int], grids: list[np.ndarray], **_: Any) -> list[int]:
    """Lowest scores first over all groups (ties: earlier group, then lower index), skipping
    channels of a group that reached its cap; with `round_to`, those counts rounded."""
    scores = [g.scores / g.scores.mean().clamp_min(1e-30) if o.normalize else g.scores for g in groups]
    flat = torch.cat(scores) if scores else torch.zeros(0)
    owner = torch.cat([torch.full((g.channels,), i) for i, g in enumerate(groups)]) if groups else flat
    counts = [0] * len(groups)
    left = n_remove
    for i in owner[torch.sort(flat, stable=True).indices].tolist():
        if left == 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            left -= 1
    return round_counts(counts, grids, n_remove) if rounded(o) else counts


__all__ = ["SHRINKERS", "ChannelGroup", "ChannelPlan", "DPShrinkOptions", "GlobalShrinkOptions",
           "ShrinkOptions", "apply_plan", "channel_groups", "check_ignore", "check_shrink", "dependency_graph",
           "plan_channels", "register_shrinker", "shrink", "shrink_with_plan", "validate_shrink_options"]
