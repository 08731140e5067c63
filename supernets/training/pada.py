"""PA&DA (Lu et al. CVPR 2023): path and data importance sampling for single-path training.

The variance of a one-shot supernet's gradient is smallest when paths and examples are drawn
with probability proportional to their gradient norms. PA&DA estimates both during training:

- path: every (dimension, choice) keeps the mean gradient norm of the steps whose path used
  it (as PA&DA averages per operation); each step draws every dimension's choice with
  probability proportional to that mean, so an arch's probability is the product over its
  dimensions. Choices not yet seen get their dimension's mean.
- data: every example keeps its last gradient-norm proxy |softmax(logits) - onehot(y)|, the
  norm of the loss gradient wrt the logits; each epoch's examples are drawn with replacement
  with probability proportional to it (a sampler that replaces the loader's own).

Both update once per epoch and mix with uniform by tau, ramped from `tau_start` (first epoch)
to `tau_end` (last), as PA&DA ramps tau from 0. The state goes into the checkpoint, so an
epoch-boundary resume draws what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler

from nasbench_core.errors import UserError
from supernets.space import Arch, SearchSpace
from supernets.training.planners import StepPlanner
from supernets.training.recipe_options import typed
from supernets.training.sampling import Member


def mixed(importance: np.ndarray, tau: float) -> np.ndarray:
    """tau * importance / sum + (1 - tau) * uniform."""
    importance = np.asarray(importance, dtype=float)
    return tau * importance / importance.sum() + (1 - tau) / importance.size


class PathImportance:
    """Per-dimension choice probabilities from the gradient norms of the paths that used them."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.probs = [np.full(len(d.choices), 1 / len(d.choices)) for d in space]
        self.sums = [np.zeros(len(d.choices)) for d in space]
        self.counts = [np.zeros(len(d.choices)) for d in space]

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.space.canonical({d.name: d.choices[int(rng.choice(len(p), p=p))]
                                     for d, p in zip(self.space, self.probs, strict=True)})

    def observe(self, arch: Arch, grad_norm: float) -> None:
        """Credit `grad_norm` to each choice of `arch` that is active in it."""
        for i, d in enumerate(self.space):
            if self.space.is_active(arch, d.name):
                j = d.index(arch[d.name])
                self.sums[i][j] += grad_norm
                self.counts[i][j] += 1

    def refresh(self, tau: float) -> None:
        """New probabilities from this epoch's mean norms; starts the next epoch's means."""
        for i, (sums, counts) in enumerate(zip(self.sums, self.counts, strict=True)):
            if counts.any():
                means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
                means[counts == 0] = means[counts > 0].mean()
                if means.sum() > 0:
                    self.probs[i] = mixed(means, tau)
            sums[:] = 0
            counts[:] = 0

    def state_dict(self) -> dict[str, Any]:
        return {k: [a.tolist() for a in getattr(self, k)] for k in ("probs", "sums", "counts")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("probs", "sums", "counts"):
            setattr(self, k, [np.asarray(a, dtype=float) for a in state[k]])


class DataImportance:
    """Per-example proxies and the epoch's draw of example indices (in loader order)."""

    def __init__(self, size: int):
        self.scores = np.ones(size)
        self.order = np.arange(size)
        self.position = 0

    def draw(self, tau: float, seed: int, epoch: int) -> None:
        rng = np.random.default_rng([int(seed), int(epoch), 0xDA])
        self.order = rng.choice(self.scores.size, size=self.scores.size, replace=True,
                                p=mixed(self.scores, tau))
        self.position = 0

    def observe(self, proxies: np.ndarray) -> None:
        """The proxies of the next batch, in the order the sampler yielded its examples."""
        end = self.position + len(proxies)
        self.scores[self.order[self.position:end]] = proxies
        self.position = end

    def state_dict(self) -> dict[str, Any]:
        """Scores and how far into the epoch's order the steps got (a mid-epoch resume
        re-draws the order with `draw`, then restores this)."""
        return {"scores": self.scores.tolist(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = np.asarray(state["scores"], dtype=float)
        self.position = int(state.get("position", 0))


class ImportanceSampler(Sampler[int]):
    """Yields the current epoch's drawn indices (`DataImportance.order`)."""

    def __init__(self, data: DataImportance):
        self.data = data

    def __len__(self) -> int:
        return self.data.scores.size

    def __iter__(self) -> Iterator[int]:
        return iter(self.data.order.tolist())


def sample_grad_proxy(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """|softmax(logits) - onehot(y)| per example: the norm of d(cross-entropy)/d(logits)."""
    probs = logits.float().softmax(-1)
    return (probs - F.one_hot(y, probs.shape[-1]).float()).norm(dim=-1).cpu().numpy()


def grad_norm(ctx: Any) -> float:
    """Global norm of the net's gradients, unscaled from the GradScaler's units."""
    total = sum(float(p.grad.float().pow(2).sum()) for p in ctx.net.parameters()
                if p.grad is not None)
    scale = ctx.scaler.get_scale() if ctx.scaler.is_enabled() else 1.0
    return math.sqrt(total) / scale


class PadaPlanner(StepPlanner):
    """One path per step (single-path, from labels), drawn by path importance; examples drawn
    by data importance through `wrap_loader`."""

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.options = typed("pada", cfg.pada)
        self.path = PathImportance(space) if self.options.path else None
        self.data: DataImportance | None = None

    def tau(self, epoch: int) -> float:
        o = self.options
        return o.tau_start + (o.tau_end - o.tau_start) * epoch / self.cfg.epochs

    def plan(self, ctx, x, y, seed, step, epoch):
        rng = np.random.default_rng([int(seed), int(step)])
        arch = self.path.sample(rng) if self.path is not None else self.space.sample(rng)
        return [Member("uniform", arch)]

    def begin_epoch(self, epoch, seed):
        if self.path is not None:
            self.path.refresh(self.tau(epoch))
        if self.data is not None:
            self.data.draw(self.tau(epoch), seed, epoch)

    def observe(self, ctx, members, logits, y):
        if self.path is not None:
            self.path.observe(members[-1].arch, grad_norm(ctx))
        if self.data is not None:
            self.data.observe(sample_grad_proxy(logits, y))

    def wrap_loader(self, loader):
        """The loader drawing examples by data importance: a DataLoader (or a wrapper holding
        one as `.loader`, e.g. a progress tracker) rebuilt around `ImportanceSampler`."""
        if not self.options.data:
            return loader
        inner = loader if isinstance(loader, DataLoader) else getattr(loader, "loader", None)
        if not (isinstance(inner, DataLoader) and inner.batch_size is not None
                and isinstance(inner.sampler, (RandomSampler, SequentialSampler))):
            raise UserError("train.pada.data needs a torch DataLoader with batch_size and its "
                            "own random or sequential sampler (not a distributed one); set "
                            "train.pada.data: false")
        self.data = DataImportance(len(inner.dataset))
        extra = ({"prefetch_factor": inner.prefetch_factor,
                  "persistent_workers": inner.persistent_workers} if inner.num_workers else {})
        rebuilt = DataLoader(
            inner.dataset, batch_size=inner.batch_size, sampler=ImportanceSampler(self.data),
            num_workers=inner.num_workers, collate_fn=inner.collate_fn,
            pin_memory=inner.pin_memory, drop_last=inner.drop_last, timeout=inner.timeout,
            worker_init_fn=inner.worker_init_fn, generator=inner.generator, **extra)
        if inner is loader:
            return rebuilt
        loader.loader = rebuilt
        return loader

    def state_dict(self):
        return {"path": self.path.state_dict() if self.path is not None else None,
                "data": self.data.state_dict() if self.data is not None else None}

    def load_state_dict(self, state):
        if state.get("path") is not None and self.path is not None:
            self.path.load_state_dict(state["path"])
        if state.get("data") is not None and self.data is not None:
            self.data.load_state_dict(state["data"])
