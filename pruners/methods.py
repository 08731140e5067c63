"""Registry entries: thin adapters from `prune(model, method, sparsity, **kw)` to each method.

Each entry is `fn(model, targets, k, options, **needs)`: `options` is the entry's typed model
from `pruners.options`, already checked by value; `needs` are what the entry declares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

import cuda_ext
from pruners import baselines
from pruners import options as opt
from pruners.errors import PruneError
from pruners.layer_dp import layer_dp
from pruners.lottery import TrainFn, lottery_ticket
from pruners.magnitude import FinetuneFn, global_magnitude, gradual_magnitude
from pruners.registry import register_pruner
from pruners.selection import Target


@register_pruner("global_magnitude", options=opt.MagnitudeOptions)
def _global_magnitude(model: nn.Module, targets: Sequence[Target], k: int,
                      o: opt.MagnitudeOptions) -> Iterable[torch.Tensor]:
    if o.min_keep:
        return global_magnitude([t.tensor for t in targets], k, o.min_keep)
    return cuda_ext.iter_global_magnitude_masks([t.tensor.detach() for t in targets], k)


@register_pruner("gradual_magnitude", options=opt.GradualOptions, needs=("finetune",))
def _gradual(model: nn.Module, targets: Sequence[Target], k: int, o: opt.GradualOptions, *,
             finetune: FinetuneFn | None = None) -> list[torch.Tensor]:
    n = sum(t.numel for t in targets)
    return gradual_magnitude(model, targets, k / n, steps=o.steps, initial_sparsity=o.initial_sparsity,
                             min_keep=o.min_keep, finetune=finetune)


@register_pruner("uniform")
def _uniform(model: nn.Module, targets: Sequence[Target], k: int,
             o: opt.PrunerOptions) -> list[torch.Tensor]:
    return baselines.uniform(targets, k)


@register_pruner("uniform_plus", options=opt.UniformPlusOptions)
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


@register_pruner("lottery", options=opt.LotteryOptions, needs=("train_fn", "out_dir", "on_level"))
def _lottery(model: nn.Module, targets: Sequence[Target], k: int, o: opt.LotteryOptions, *,
             train_fn: TrainFn | None = None, out_dir: str | None = None,
             on_level: Callable[[int, nn.Module], Any] | None = None) -> list[torch.Tensor]:
    if train_fn is None:
        raise PruneError("lottery needs train_fn(model, span, on_step)")
    n = sum(t.numel for t in targets)
    lottery_ticket(model, train_fn, sparsity=k / n, fraction=o.fraction, scope=o.scope,
                   rewind=o.rewind, train=o.train, out_dir=out_dir, on_level=on_level,
                   targets=targets)
    return [t.mask if t.mask is not None else torch.ones_like(t.param, dtype=torch.bool)
            for t in targets]


@register_pruner("layer_dp", options=opt.LayerDPOptions, needs=("data", "example_input"))
def _layer_dp(model: nn.Module, targets: Sequence[Target], k: int, o: opt.LayerDPOptions, *,
              data: Any = None, example_input: torch.Tensor | None = None) -> list[torch.Tensor]:
    return layer_dp(model, targets, k, data=data, example_input=example_input, **o.model_dump())
