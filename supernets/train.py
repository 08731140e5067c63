"""`supernets.train`: the public name of the training recipe (see `supernets.training`)."""

from supernets.training import (
    Member,
    PinnedArch,
    TrainHParams,
    TrainResult,
    distill_loss,
    evaluate_arch,
    step_plan,
    train_standalone,
    train_supernet,
)

__all__ = [
    "Member",
    "PinnedArch",
    "TrainHParams",
    "TrainResult",
    "distill_loss",
    "evaluate_arch",
    "step_plan",
    "train_standalone",
    "train_supernet",
]
