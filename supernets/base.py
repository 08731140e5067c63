"""The `Supernet` base class (the family registry is `supernets.registry`).

A family subclass builds its elastic layers, owns a `SearchSpace` and implements three things:
`_configure(arch)` (push the arch's choices into its elastic ops), `_extract()` (stock layers
for the active arch) and `count_params(arch)` (analytic, without building anything).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasbench_core.errors import UserError
from supernets.space import Arch, SearchSpace

_module_generation = 0  # bumped whenever any module registers a submodule anywhere


def _bump_generation(*_: Any) -> None:
    global _module_generation
    _module_generation += 1


torch.nn.modules.module.register_module_module_registration_hook(_bump_generation)


def prepare_input(x: torch.Tensor, arch: Mapping[str, Any] | None) -> torch.Tensor:
    """Resize a batch to the arch's `resolution` (bilinear); a no-op when the arch has none."""
    if not arch or "resolution" not in arch:
        return x
    res = int(arch["resolution"])
    if x.shape[-2] == res and x.shape[-1] == res:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def batches_for(loader: Any, arch: Mapping[str, Any] | None) -> Any:
    """`loader.at_resolution(r)` for an arch with a `resolution` when the loader can resample
    its samples at another size (nasbench's data mode: antialiased, from the source images),
    else `loader` itself, whose batches `prepare_input` then interpolates."""
    at_resolution = getattr(loader, "at_resolution", None)
    if not callable(at_resolution) or not arch or "resolution" not in arch:
        return loader
    return at_resolution(int(arch["resolution"]))


def training_layout(x: torch.Tensor) -> torch.Tensor:
    """NHWC for training on CPU and CUDA: oneDNN's conv backward (depthwise above all) is
    several times faster in channels-last, and cuDNN's tensor-core kernels want it under
    autocast; inference keeps the caller's layout, like an extracted subnet."""
    if x.device.type in ("cpu", "cuda") and x.dim() == 4 and torch.is_grad_enabled():
        return x.contiguous(memory_format=torch.channels_last)
    return x


class Supernet(nn.Module):
    """A weight-sharing network over `space`; `forward` runs the active subnet."""

    family: str = "?"

    def __init__(self, space: SearchSpace, build_kwargs: dict[str, Any]):
        super().__init__()
        self.space = space
        self._build_kwargs = {**build_kwargs, "mos": None}
        self._active: Arch | None = None
        self._hooks: tuple[int, list[nn.Module]] = (-1, [])

    # -- arch selection --------------------------------------------------------------------
    @property
    def active_arch(self) -> Arch:
        if self._active is None:
            raise UserError("no active arch: call set_active(arch) first")
        return dict(self._active)

    def set_active(self, arch: Mapping[str, Any]) -> None:
        """Validate `arch`, configure the elastic ops, then run `on_set_active` hooks (MoS)."""
        arch = self.space.validate(arch)
        self._configure(arch)
        self._active = arch
        hooks = self._hook_modules()
        if hooks:
            features = torch.from_numpy(self.space.features(arch))
            for m in hooks:
                m.on_set_active(arch, features)

    def _hook_modules(self) -> list[nn.Module]:
        """Submodules with `on_set_active`, rescanned only after the module tree changed."""
        if self._hooks[0] != _module_generation:
            found = [m for m in self.modules() if hasattr(m, "on_set_active")]
            self._hooks = (_module_generation, found)
        return self._hooks[1]

    def prepare_input(self, x: torch.Tensor, arch: Mapping[str, Any] | None = None) -> torch.Tensor:
        return prepare_input(x, self._active if arch is None else arch)

    # -- extraction and bookkeeping --------------------------------------------------------
    def extract(self, arch: Mapping[str, Any] | None = None) -> nn.Module:
        """A standalone module of stock torch layers with the arch's (copied) weights."""
        previous = self._active
        self.set_active(self._active if arch is None else arch)
        try:
            with torch.no_grad():
                module = self._extract()
            module.train(self.training)
            return module
        finally:
            if previous is not None:
                self.set_active(previous)

    def build_config(self) -> dict[str, Any]:
        """Family name and keyword arguments that rebuild this supernet via `create(**cfg)`."""
        return {"name": self.family, **self._build_kwargs}

    def reorder_channels(self) -> None:
        """Sort elastic channels by L1 importance so leading slices keep the important ones."""
        with torch.no_grad():
            for m in self.modules():
                if m is not self and hasattr(m, "reorder_channels"):
                    m.reorder_channels()

    # -- to implement per family -----------------------------------------------------------
    def _configure(self, arch: Arch) -> None:
        raise NotImplementedError

    def _extract(self) -> nn.Module:
        raise NotImplementedError

    def count_params(self, arch: Mapping[str, Any]) -> int:
        raise NotImplementedError
