"""Supernet training recipe: hyperparameters, sandwich sampling, optimizer/schedule, loop."""

from supernets.training.hparams import TrainHParams
from supernets.training.loop import TrainResult, distill_loss, evaluate_arch, train_supernet
from supernets.training.sampling import Member, step_plan
from supernets.training.standalone import PinnedArch, train_standalone

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
