"""Registry entries: thin adapters from `prune(model, method, sparsity, **kw)` to each method.

Each entry is `fn(model, targets, k, options, **needs)`: `options` is the entry's typed model
from `pruners.options`, already checked by value; `needs` are what the entry declares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pruners import baselines
from pruners import options as opt
from pruners.errors import PruneError
from pruners.layer_dp import layer_dp
from pruners.lottery import TrainFn, count_levels, lottery_ticket, plan_groups
from pruners.magnitude import (
    FinetuneFn,
    check_min_keep,
    global_magnitude,
    gradual_magnitude,
    iter_magnitude_masks,
)
from pruners.registry import register_pruner
from pruners.selection import Target


def _check_min_keep(targets: Sequence[Target], k: int, o: opt.MagnitudeOptions | opt.GradualOptions) -> None:
    check_min_keep([t.numel for t in targets], k, o.min_keep)


@register_pruner("global_magnitude", options=opt.MagnitudeOptions, check=_check_min_keep)
def _global_magnitude(model: nn.Module, targets: Sequence[Target], k: int,
                      o: opt.MagnitudeOptions) -> Iterable[torch.Tensor]:
    if o.min_keep:
        return global_magnitude([t.tensor for t in targets], k, o.min_keep)
    return iter_magnitude_masks([t.tensor.detach() for t in targets], k)


@register_pruner("gradual_magnitude", options=opt.GradualOptions, needs=("finetune", "on_level"),
                 check=_check_min_keep)
def _gradual(model: nn.Module, targets: Sequence[Target], k: int, o: opt.GradualOptions, *,
             finetune: FinetuneFn | None = None,
             on_level: Callable[..., Any] | None = None) -> list[torch.Tensor]:
    n = sum(t.numel for t in targets)
    return gradual_magnitude(model, targets, k / n, **o.model_dump(), finetune=finetune,
                             on_step=on_level)


@register_pruner("uniform")
def _uniform(model: nn.Module, targets: Sequence[Target], k: int,
             o: opt.PrunerOptions) -> list[torch.Tensor]:
    return baselines.uniform(targets, k)


def _check_uniform_plus(targets: Sequence[Target], k: int, o: opt.UniformPlusOptions) -> None:
    baselines.uniform_plus_caps(targets, k, o.last_keep)


@register_pruner("uniform_plus", options=opt.UniformPlusOptions, check=_check_uniform_plus)
def _uniform_plus(model: nn.Module, targets: Sequence[Target], k: int,
                  o: opt.UniformPlusOptions) -> list[torch.Tensor]:
    return baselines.uniform_plus(targets, k, o.last_keep)


@register_pruner("erk", options=opt.ErkOptions)
def _erk(model: nn.Module, targets: Sequence[Target], k: int,
         o: opt.ErkOptions) -> list[torch.Tensor]:
    return baselines.erk(targets, k, o.score, o.seed)


@register_pruner("lamp")
def _lamp(model: nn.Module, targets: Sequence[Target], k: int,
          o: opt.PrunerOptions) -> list[torch.Tensor]:
    return baselines.lamp(targets, k)


@register_pruner("random", options=opt.RandomOptions)
def _random(model: nn.Module, targets: Sequence[Target], k: int,
            o: opt.RandomOptions) -> list[torch.Tensor]:
    return baselines.random_global(targets, k, o.seed)


def _lottery_check(targets: Sequence[Target], k: int, o: opt.LotteryOptions) -> None:
    """The layers to ignore exist and leave room for k pruned weights, before any training."""
    groups, _ = plan_groups(targets, o.fraction, o.scope, o.layers_to_ignore, o.output_rate)
    count_levels([t.numel for t in targets], baselines.pruned_counts(targets), groups, k)


@register_pruner("lottery", options=opt.LotteryOptions, needs=("train_fn", "out_dir", "on_level"),
                 check=_lottery_check)
def _lottery(model: nn.Module, targets: Sequence[Target], k: int, o: opt.LotteryOptions, *,
             train_fn: TrainFn | None = None, out_dir: str | None = None,
             on_level: Callable[..., Any] | None = None) -> list[torch.Tensor]:
    if train_fn is None:
        raise PruneError("lottery needs train_fn(model, start, end, on_step)")
    n = sum(t.numel for t in targets)
    on_control = None if on_level is None else (
        lambda kind, level, control: on_level(level, control, control=kind))
    lottery_ticket(model, train_fn, sparsity=k / n, **o.model_dump(), out_dir=out_dir,
                   on_level=on_level, on_control=on_control, targets=targets)
    return [t.mask if t.mask is not None else torch.ones_like(t.param, dtype=torch.bool)
            for t in targets]


@register_pruner("layer_dp", options=opt.LayerDPOptions,
                 needs=("data", "example_input", "finetune", "on_progress"))
def _layer_dp(model: nn.Module, targets: Sequence[Target], k: int, o: opt.LayerDPOptions, *,
              data: Any = None, example_input: torch.Tensor | None = None,
              finetune: FinetuneFn | None = None,
              on_progress: Callable[[int, int, str], None] | None = None) -> list[torch.Tensor]:
    return layer_dp(model, targets, k, o, data=data, example_input=example_input,
                    finetune=finetune if o.finetune_steps else None, on_progress=on_progress)
