"""`train.teacher`: an external, frozen teacher for the distillation targets of supernet training.

`{from_timm: NAME, pretrained: bool, weights: PATH}` is a timm model with its pretrained or
saved weights; `{from_run: RUN_DIR, arch: largest}` is one subnet (largest, smallest or an arch
mapping) extracted from a trained supernet run, BN recalibrated on the training data. Weights
are read only as safetensors or `torch.load(weights_only=True)`. The config is checked when it
is parsed and the teacher built before the run directory exists, so a bad teacher is one line
and no half-made run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from nasbench.config import StrictModel
from nasbench_core.errors import ConfigError
from supernets.base import prepare_input

KEY = "train.teacher"


class TeacherSection(StrictModel):
    """Exactly one source: `from_timm` (with `pretrained` or `weights`) or `from_run` (with
    `arch`: largest, smallest or an arch mapping of that run's space)."""

    from_timm: str | None = None
    pretrained: bool = False
    weights: Path | None = None
    from_run: Path | None = None
    arch: str | dict[str, Any] = "largest"


def parse_teacher(value: Any) -> TeacherSection:
    """The `train.teacher` mapping, checked without loading anything heavy; ConfigError otherwise."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{KEY}: expected a mapping with from_timm or from_run, got {value!r}")
    try:
        section = TeacherSection.model_validate(dict(value))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{KEY}.{key}: {err['msg']}") from None
    given = section.model_fields_set
    if (section.from_timm is None) == (section.from_run is None):
        raise ConfigError(f"{KEY}: give exactly one of from_timm or from_run")
    if section.from_timm is not None:
        if "arch" in given:
            raise ConfigError(f"{KEY}.arch goes with from_run, not from_timm")
        if not section.pretrained and section.weights is None:
            raise ConfigError(f"{KEY}: from_timm needs pretrained: true or weights: PATH "
                              "(a randomly initialised teacher teaches nothing)")
        if section.weights is not None and not section.weights.is_file():
            raise ConfigError(f"{KEY}.weights={str(section.weights)!r} does not exist")
        import timm

        if not timm.is_model(section.from_timm):
            raise ConfigError(f"{KEY}.from_timm: unknown timm model {section.from_timm!r}")
    else:
        if given & {"pretrained", "weights"}:
            raise ConfigError(f"{KEY}.pretrained and {KEY}.weights go with from_timm, not from_run")
        if not (section.from_run / "manifest.json").is_file():
            raise ConfigError(f"{KEY}.from_run={str(section.from_run)!r} is not a run directory "
                              "(no manifest.json)")
        if isinstance(section.arch, str) and section.arch not in ("largest", "smallest"):
            raise ConfigError(f"{KEY}.arch: expected largest, smallest or an arch mapping, "
                              f"got {section.arch!r}")
    return section


def build_teacher(section: TeacherSection, *, num_classes: int, in_chans: int,
                  recal_loader: Iterable, recal_batches: int) -> nn.Module:
    """The frozen, eval-mode teacher module; its logits must cover the data's classes."""
    if section.from_timm is not None:
        model, what = _timm_teacher(section, in_chans), f"timm model {section.from_timm!r}"
    else:
        model, what = _run_teacher(section, recal_loader, recal_batches), f"run {section.from_run}"
    classes, channels = _io_sizes(model)
    if classes != num_classes:
        raise ConfigError(f"{KEY}: {what} predicts {classes} classes, the data has {num_classes}; "
                          "the teacher must be trained on the same classes")
    if channels is not None and channels != in_chans:
        raise ConfigError(f"{KEY}: {what} takes {channels}-channel images, the data has "
                          f"{in_chans}: set data.channels={channels}")
    return model.eval().requires_grad_(False)


def _timm_teacher(section: TeacherSection, in_chans: int) -> nn.Module:
    """The timm model for the data's channels (timm adapts a pretrained stem); its classifier
    sized by the weights file, so a head trained on other classes is refused, not replaced."""
    from nasbench.runners.prune import _read_weights
    from supernets.timm_bridge import create_timm_model

    model = create_timm_model(section.from_timm, section.pretrained, None, in_chans)
    if section.weights is None:
        return model
    from supernets.timm_bridge import load_timm_state

    state = _read_weights(section.weights)  # safetensors or weights_only: never unpickled
    load_timm_state(model, state, f"{KEY}.weights={str(section.weights)!r}", section.from_timm)
    return model


def _run_teacher(section: TeacherSection, recal_loader: Iterable, recal_batches: int) -> nn.Module:
    """The run's subnet at `arch`, extracted to stock layers, BN re-estimated for that arch."""
    from supernets import recalibrate_bn
    from supernets.checkpoint import load_supernet

    net, _ = load_supernet(section.from_run / "checkpoints")
    space = net.space
    arch = (space.largest() if section.arch == "largest" else space.smallest()
            if section.arch == "smallest" else section.arch)
    try:
        arch = space.validate(arch)
    except Exception as exc:  # ArchError names the bad key
        raise ConfigError(f"{KEY}.arch: {exc}") from None
    net.set_active(arch)
    recalibrate_bn(net, recal_loader, recal_batches, arch=arch)
    return AtResolution(net.extract(arch), arch)


class AtResolution(nn.Module):
    """A teacher subnet that first resizes the batch to its arch's resolution."""

    def __init__(self, module: nn.Module, arch: Mapping[str, Any]):
        super().__init__()
        self.module, self.arch = module, dict(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(prepare_input(x, self.arch))


def _io_sizes(model: nn.Module) -> tuple[int, int | None]:
    """Classes the model predicts (its last Linear) and channels its first conv takes."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    classes = getattr(model, "num_classes", None) or linears[-1].out_features
    return int(classes), (convs[0].in_channels if convs else None)
