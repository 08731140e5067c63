"""`TrainHParams`: every knob of the supernet training recipe, validated once, open_lth style.

A plain dataclass (not a pydantic model) so that library users and Ray workers can build it
without the CLI; `from_dict` gives the CLI one-line `ConfigError`s naming the bad key.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasbench_core.errors import ConfigError
from supernets.training import recipe_options
from supernets.training.recipes import recipe
from supernets.training.values import check_value as _check
from supernets.training.values import coerce_value as _coerce

OPTIMIZERS = ("sgd", "adamw")
SAMPLINGS = ("sandwich", "uniform", "attentive", "progressive", "pada")
LR_SCHEDULES = ("cosine", "exp")
REGULARIZE = ("all", "largest")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESOLUTION_MODES = ("data", "tensor")
FLOOR_AT = 0.75
"""With `lr_schedule="exp"` and no `lr_decay`, the lr reaches its floor after this fraction of the
post-warmup epochs and stays there (the constant ending)."""


@dataclass(frozen=True)
class TrainHParams:
    """Hyperparameters of BigNAS-style supernet training (sandwich rule + in-place distillation).

    `sampling="sandwich"`: each step trains the largest subnet on labels, then the smallest and
    `num_random` random subnets on the largest's soft logits, and takes one optimizer step.
    `sampling="uniform"`: each step trains one uniformly sampled subnet on labels (single path).

    Build from a config with `from_dict` (or `from_recipe`): they apply `recipe`'s defaults
    under the given keys. The constructor only records the recipe's name.

    `checkpoint_every=N` adds a checkpoint every N optimizer steps, so a run killed mid-epoch
    resumes from that step (bitwise exact on CPU) instead of its last epoch end. `sync_bn`
    takes BN batch statistics over all DDP processes; in a single process it does nothing
    (`train_supernet` warns once).
    """

    epochs: int = 10
    lr: float = 0.05  # peak learning rate, reached after warmup
    optimizer: str = "sgd"  # sgd (nesterov) | adamw
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-5  # never applied to norm weights and biases
    warmup_epochs: float = 1.0  # linear warmup, stepped per optimizer step
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio; the exp schedule's floor
    lr_schedule: str = "cosine"  # cosine | exp (exponential decay with a constant ending)
    lr_decay: float | None = None  # exp: lr multiplier per epoch; None: floor at FLOOR_AT
    zero_init_residual: bool = False  # zero the last BN (or projection) of each residual branch
    dropout: float | None = None  # before the classifier; None keeps the supernet's own rate
    drop_path: float | None = None  # on residual branches; None keeps the supernet's own rate
    regularize: str = "all"  # all | largest: which members train with dropout and drop-path
    label_smoothing: float = 0.1  # for members that learn from labels
    sampling: str = "sandwich"  # sandwich | uniform | attentive | progressive | pada
    num_random: int = 2  # random subnets per sandwich (besides largest and smallest)
    distill_temperature: float = 1.0  # softens teacher and student logits in the KL
    grad_clip: float | None = 1.0  # max global grad norm; None disables clipping
    max_steps_per_epoch: int | None = None  # cap on batches per epoch (quick runs)
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    bn_recal_batches: int = 10  # batches for BN recalibration before each validation
    val_max_batches: int | None = None  # cap on validation batches
    keep_checkpoints: int = 2  # newest checkpoints kept (epoch and mid-epoch ones alike)
    checkpoint_every: int | None = None  # also checkpoint every N optimizer steps (mid-epoch)
    sync_bn: bool = False  # under DDP with >1 process: BN statistics over the global batch
    # data: the loader resamples each batch from the source images at the sizes the step
    # trains (one per step for the children, OFA-style; see supernets.training.resolution);
    # tensor: one batch at the largest resolution, interpolated down inside the step.
    resolution_mode: str = "tensor"
    recipe: str = "default"  # named preset of these fields (supernets.training.recipes)
    # The sampling recipes' option sections (schemas in supernets.training.recipe_options),
    # stored as plain dicts with every key; filled with defaults when `sampling` needs them.
    attentive: dict[str, Any] | None = None  # sampling="attentive": {mode, candidates}
    ofa_ps: dict[str, Any] | None = None  # sampling="progressive": {phases, phase_epochs}
    pada: dict[str, Any] | None = None  # sampling="pada": {path, data, tau_start, tau_end}
    distill_from_initial: bool = False  # KD targets: the frozen starting supernet's largest

    def __post_init__(self) -> None:
        recipe(self.recipe)
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "a number >= 0")
        _check(
            self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
            "warmup_epochs", self.warmup_epochs, f"less than epochs ({self.epochs})",
        )
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        _check(
            0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
            "a number in [0, 1)",
        )
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule,
               f"one of {LR_SCHEDULES}")
        _check(self.lr_decay is None or 0 < self.lr_decay <= 1, "lr_decay", self.lr_decay,
               "a number in (0, 1] or null")
        _check(
            self.lr_schedule != "exp" or self.lr_decay is not None or self.min_lr_ratio > 0,
            "min_lr_ratio", self.min_lr_ratio,
            "a floor > 0 for lr_schedule 'exp' without lr_decay (or set lr_decay)",
        )
        for key in ("dropout", "drop_path"):
            value = getattr(self, key)
            _check(value is None or 0 <= value < 1, key, value, "a number in [0, 1) or null")
        _check(self.regularize in REGULARIZE, "regularize", self.regularize,
               f"one of {REGULARIZE}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(self.resolution_mode in RESOLUTION_MODES, "resolution_mode", self.resolution_mode,
               f"one of {RESOLUTION_MODES}")
        _check(self.sampling in SAMPLINGS, "sampling", self.sampling, f"one of {SAMPLINGS}")
        _check(self.num_random >= 0, "num_random", self.num_random, "an integer >= 0")
        for key in recipe_options.SECTIONS:
            object.__setattr__(self, key, recipe_options.normalize(
                key, getattr(self, key), self.sampling))
        _check(
            self.distill_temperature > 0, "distill_temperature", self.distill_temperature,
            "a number > 0",
        )
        _check(
            self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip,
            "a number > 0 or null (no clipping)",
        )
        _check(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "max_steps_per_epoch", self.max_steps_per_epoch, "an integer >= 1 or null",
        )
        _check(self.bn_recal_batches >= 1, "bn_recal_batches", self.bn_recal_batches, "an integer >= 1")
        _check(
            self.val_max_batches is None or self.val_max_batches >= 1,
            "val_max_batches", self.val_max_batches, "an integer >= 1 or null",
        )
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(
            self.checkpoint_every is None or self.checkpoint_every >= 1,
            "checkpoint_every", self.checkpoint_every, "an integer >= 1 or null",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, prefix: str = "") -> TrainHParams:
        """Build from a mapping (a YAML section): `recipe`'s defaults, overridden by the given
        keys; unknown keys and wrong types are ConfigErrors."""
        data = dict(data or {})
        try:
            preset = recipe(data.get("recipe", "default"))
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
        data = {**preset.defaults, **data}
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        for key, value in data.items():
            if key not in hints:
                raise ConfigError(f"unknown key '{prefix}{key}'; allowed: {', '.join(names)}")
            data[key] = _coerce(f"{prefix}{key}", value, hints[key])
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}" if prefix else str(exc)) from None

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainHParams:
        """The recipe `name`'s settings with `overrides` on top (the library form of a config)."""
        return cls.from_dict({"recipe": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainHParams:
        return dataclasses.replace(self, **changes)
