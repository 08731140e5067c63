"""Registry entries: thin adapters from `prune(model, method, sparsity, **kw)` to each method."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

import cuda_ext
from pruners import baselines
from pruners.errors import PruneError
from pruners.layer_dp import layer_dp
from pruners.lottery import TrainFn, lottery_ticket
from pruners.magnitude import FinetuneFn, global_magnitude, gradual_magnitude
from pruners.registry import register_pruner
from pruners.selection import Target


@register_pruner("global_magnitude")
def _global_magnitude(model: nn.Module, targets: Sequence[Target], k: int,
                      min_keep: int | float = 0) -> Iterable[torch.Tensor]:
    if min_keep:
        return global_magnitude([t.tensor for t in targets], k, min_keep)
    return cuda_ext.iter_global_magnitude_masks([t.tensor.detach() for t in targets], k)


@register_pruner("gradual_magnitude", needs=("finetune",))
def _gradual(model: nn.Module, targets: Sequence[Target], k: int, steps: int = 10,
             initial_sparsity: float = 0.0, min_keep: int | float = 0,
             finetune: FinetuneFn | None = None) -> list[torch.Tensor]:
    n = sum(t.numel for t in targets)
    return gradual_magnitude(model, targets, k / n, steps=steps, initial_sparsity=initial_sparsity,
                             min_keep=min_keep, finetune=finetune)


@register_pruner("uniform")
def _uniform(model: nn.Module, targets: Sequence[Target], k: int) -> list[torch.Tensor]:
    return baselines.uniform(targets, k)


@register_pruner("uniform_plus")
def _uniform_plus(model: nn.Module, targets: Sequence[Target], k: int,
                  last_keep: float = 0.2) -> list[torch.Tensor]:
    return baselines.uniform_plus(targets, k, last_keep)


@register_pruner("erk")
def _erk(model: nn.Module, targets: Sequence[Target], k: int, score: str = "magnitude",
         seed: int = 0) -> list[torch.Tensor]:
    return baselines.erk(targets, k, score, seed)


@register_pruner("lamp")
def _lamp(model: nn.Module, targets: Sequence[Target], k: int) -> list[torch.Tensor]:
    return baselines.lamp(targets, k)


@register_pruner("random")
def _random(model: nn.Module, targets: Sequence[Target], k: int,
            seed: int = 0) -> list[torch.Tensor]:
    return baselines.random_global(targets, k, seed)


@register_pruner("lottery", needs=("train_fn", "out_dir", "on_level"))
def _lottery(model: nn.Module, targets: Sequence[Target], k: int, train_fn: TrainFn | None = None,
             fraction: float = 0.2, scope: str = "global", rewind: str = "0it",
             train: str = "1ep", out_dir: str | None = None,
             on_level: Callable[[int, nn.Module], Any] | None = None) -> list[torch.Tensor]:
    if train_fn is None:
        raise PruneError("lottery needs train_fn(model, span, on_step)")
    n = sum(t.numel for t in targets)
    lottery_ticket(model, train_fn, sparsity=k / n, fraction=fraction, scope=scope,
                   rewind=rewind, train=train, out_dir=out_dir, on_level=on_level,
                   targets=targets)
    return [t.mask if t.mask is not None else torch.ones_like(t.param, dtype=torch.bool)
            for t in targets]


@register_pruner("layer_dp", needs=("data",))
def _layer_dp(model: nn.Module, targets: Sequence[Target], k: int,
              data: Any = None, example_input: torch.Tensor | None = None,
              num_samples: int = 1024, num_amounts: int = 101, budget_units: int = 4096,
              worst_case: bool = False, iterative_steps: int = 1, batch_size: int = 256,
              seed: int = 0, min_keep: int | float = 0) -> list[torch.Tensor]:
    return layer_dp(model, targets, k, data=data, example_input=example_input,
                    num_samples=num_samples, num_amounts=num_amounts,
                    budget_units=budget_units, worst_case=worst_case,
                    iterative_steps=iterative_steps, batch_size=batch_size, seed=seed,
                    min_keep=min_keep)
