"""The supernet family registry: `register_supernet`, `list_supernets`, `create`.

It lives apart from `supernets.base` so that the base class imports nothing that imports it
back: families import the base and this registry; this registry imports families lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    net = cls(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, preset=preset,
              **kwargs)
    if mos is not None:
        net = apply_mos(net, mos)
    net._build_kwargs["mos"] = None if mos is None else dict(mos)
    return net
