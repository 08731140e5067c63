"""The supernet family registry: `register_supernet`, `list_supernets`, `create`.

It lives apart from `supernets.base` so that the base class imports nothing that imports it
back: families import the base and this registry; this registry imports families lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nasbench_core.errors import UserError
from nasbench_core.registry import Registry
from supernets.base import Supernet


def _import_families() -> None:
    import supernets.families  # noqa: F401  (their @register_supernet decorators fill SUPERNETS)


SUPERNETS: Registry[type[Supernet]] = Registry("supernet family", discover=_import_families)


def register_supernet(name: str) -> Callable[[type[Supernet]], type[Supernet]]:
    """Class decorator: make a family available to `create(name, ...)`."""

    def deco(cls: type[Supernet]) -> type[Supernet]:
        cls.family = name
        return SUPERNETS.register(name)(cls)

    return deco


def list_supernets() -> list[str]:
    return SUPERNETS.list()


MAX_PARAMS = 4_000_000_000  # 16 GB of float32 weights: more than this machine class can train


def check_size(name: str, cls: type[Supernet], **kwargs: Any) -> None:
    """Build the supernet on the meta device first (no memory) and refuse one whose weights
    could not be allocated, in one line, before the real build tries."""
    import torch

    with torch.device("meta"):
        probe = cls(**kwargs)
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMS:
        raise UserError(f"this {name} supernet would hold {n:,} parameters (at most {MAX_PARAMS:,}); "
                        "check width_mult and the supernet options")


def create(
    name: str,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width_mult: float = 1.0,
    preset: str = "default",
    mos: dict | None = None,
    **kwargs: Any,
) -> Supernet:
    """Build a supernet of family `name`; `mos` turns it into a mixture-of-supernets."""
    from supernets.mos import apply_mos

    cls = SUPERNETS.get(name)
    if kwargs or width_mult != 1.0:  # the presets themselves are known sizes
        check_size(name, cls, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult,
                   preset=preset, **kwargs)
    net = cls(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, preset=preset,
              **kwargs)
    if mos is not None:
        net = apply_mos(net, mos)
    net._build_kwargs["mos"] = None if mos is None else dict(mos)
    return net
