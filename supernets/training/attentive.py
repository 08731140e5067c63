"""AttentiveNAS sampling (Wang et al. 2021): train the best or the worst of k candidate archs.

Each step keeps the sandwich's two extremes (the largest teaches, the smallest bounds the
front) and replaces every random middle child by the best (BestUp) or worst (WorstUp) of
`candidates` uniformly drawn archs. The paper compares two cheap scores and finds both work:
an accuracy predictor and the supernet's own minibatch loss. We use the minibatch loss on the
step's batch: it needs no separate (arch, acc) data, no warm-up while a predictor is fit, and
no state to checkpoint, so a resumed run draws exactly what the uninterrupted one would have
(the candidates come from (seed, step), the scores from the restored weights and batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from supernets.base import prepare_input
from supernets.space import Arch, SearchSpace
from supernets.training.sampling import Member

Scorer = Callable[[Sequence[Arch]], Sequence[float]]
"""Scores a list of archs; higher is better (e.g. minus the minibatch loss)."""


def pick(scores: Sequence[float], mode: str) -> int:
    """Index of the best (`best_up`) or worst (`worst_up`) score; ties go to the first."""
    values = np.asarray(scores, dtype=float)
    return int(np.argmax(values) if mode == "best_up" else np.argmin(values))


def attentive_plan(space: SearchSpace, options: Any, num_random: int, seed: int, step: int,
                   score: Scorer) -> list[Member]:
    """Largest, smallest, then `num_random` children, each picked from its own candidates."""
    rng = np.random.default_rng([int(seed), int(step)])
    members = [Member("largest", space.largest()), Member("smallest", space.smallest())]
    for _ in range(num_random):
        candidates = [space.sample(rng) for _ in range(options.candidates)]
        scores = score(candidates) if options.candidates > 1 else [0.0]
        members.append(Member("random", candidates[pick(scores, options.mode)]))
    return members


def minibatch_scorer(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     autocast: Callable[[], Any]) -> Scorer:
    """Minus each arch's cross-entropy on (x, y), without gradients and without touching BN
    running statistics (train-mode BN: batch statistics, as the step itself will see them).
    Under DDP the losses are averaged over the workers, so every worker picks the same arch."""

    def score(archs: Sequence[Arch]) -> list[float]:
        losses = []
        with torch.no_grad(), _bn_stats_kept(net):
            for arch in archs:
                net.set_active(arch)
                with autocast():
                    logits = net(prepare_input(x, arch))
                losses.append(F.cross_entropy(logits.float(), y))
        mean = torch.stack(losses)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        return [-float(v) for v in mean.cpu()]

    return score


@contextmanager
def _bn_stats_kept(net: nn.Module):
    """Scoring forwards leave every BN's running mean, var and batch count as they were."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats and m.running_mean is not None]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    try:
        yield
    finally:
        for bn, (mean, var, count) in zip(bns, saved, strict=True):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
