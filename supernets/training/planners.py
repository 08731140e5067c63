"""Step planners: which members a step trains, for every `train.sampling`.

The loop asks its planner for each step's members (`plan`) and tells it what the step saw
(`observe`, before gradient clipping); a planner with state (PA&DA's importance tables)
round-trips it through the checkpoint (`state_dict` / `load_state_dict`). Sandwich and
uniform sampling are stateless and draw from (seed, step) alone, as `step_plan` does.
"""

from __future__ import annotations

from typing import Any

import torch

from supernets.space import SearchSpace
from supernets.training.hparams import TrainHParams
from supernets.training.recipe_options import typed
from supernets.training.sampling import Member, step_plan


class StepPlanner:
    """Sandwich or uniform sampling; the base of the recipe planners."""

    def __init__(self, cfg: TrainHParams, space: SearchSpace):
        self.cfg, self.space = cfg, space

    def plan(self, ctx: Any, x: torch.Tensor, y: torch.Tensor, seed: int, step: int,
             epoch: int) -> list[Member]:
        return step_plan(self.space, self.cfg.sampling, self.cfg.num_random, seed, step)

    def begin_epoch(self, epoch: int, seed: int) -> None:
        """Called before the epoch's first batch is drawn."""

    def observe(self, ctx: Any, members: list[Member], logits: torch.Tensor,
                y: torch.Tensor) -> None:
        """After the step's backward passes, before clipping; `logits` are the last member's."""

    def wrap_loader(self, loader: Any) -> Any:
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AttentivePlanner(StepPlanner):
    """BestUp / WorstUp children scored by the minibatch loss (see `attentive`)."""

    def plan(self, ctx, x, y, seed, step, epoch):
        from supernets.training.attentive import attentive_plan, minibatch_scorer

        def autocast() -> torch.autocast:
            return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.use_amp)

        return attentive_plan(self.space, typed("attentive", self.cfg.attentive),
                              self.cfg.num_random, seed, step,
                              minibatch_scorer(ctx.net, x, y, autocast))


class ProgressivePlanner(StepPlanner):
    """OFA progressive shrinking (see `progressive`)."""

    def __init__(self, cfg, space):
        from supernets.training.progressive import ProgressiveShrinking

        super().__init__(cfg, space)
        self.shrinking = ProgressiveShrinking(space, typed("ofa_ps", cfg.ofa_ps), cfg.epochs)

    def plan(self, ctx, x, y, seed, step, epoch):
        return self.shrinking.plan(self.cfg.num_random, seed, step, epoch)


def build_planner(cfg: TrainHParams, space: SearchSpace) -> StepPlanner:
    """The planner of `cfg.sampling` for `space` (UserError when the space cannot run it)."""
    if cfg.sampling == "attentive":
        return AttentivePlanner(cfg, space)
    if cfg.sampling == "progressive":
        return ProgressivePlanner(cfg, space)
    if cfg.sampling == "pada":
        from supernets.training.pada import PadaPlanner

        return PadaPlanner(cfg, space)
    return StepPlanner(cfg, space)
