"""Which parameters a pruner may touch.

Default: every Conv/Linear `weight`. Users narrow or widen this by module type and by
name glob (fnmatch on the module's qualified name), and can keep the first conv and the
classifier dense. A pattern that matches nothing is a mistake, not a no-op.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruners.errors import PruneError

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Target:
    """One prunable tensor: `module.<attr>` known in the model as `name` (e.g. `fc.weight`)."""

    name: str
    module_name: str
    module: nn.Module
    attr: str = "weight"

    @property
    def tensor(self) -> torch.Tensor:
        """The effective (already masked) weight; the importance source for every pruner."""
        orig = getattr(self.module, self.attr + "_orig", None)
        if orig is None:
            return getattr(self.module, self.attr)
        mask = getattr(self.module, self.attr + "_mask")
        return orig.detach() * mask

    @property
    def param(self) -> torch.Tensor:
        """The trainable storage: `weight_orig` when pruned, else `weight`."""
        orig = getattr(self.module, self.attr + "_orig", None)
        return orig if orig is not None else getattr(self.module, self.attr)

    @property
    def mask(self) -> torch.Tensor | None:
        """The live bool mask (no copy); it changes when the layer is pruned again."""
        mask = getattr(self.module, self.attr + "_mask", None)
        return None if mask is None else mask.bool()

    @property
    def numel(self) -> int:
        return self.param.numel()


def _resolve_types(types: Iterable[type[nn.Module] | str] | None) -> tuple[type[nn.Module], ...]:
    if types is None:
        return ()
    out = []
    for t in types:
        if isinstance(t, str):
            cls = getattr(nn, t, None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise PruneError(f"unknown module type {t!r}; expected a torch.nn class name")
            out.append(cls)
        else:
            out.append(t)
    return tuple(out)


def select_targets(
    model: nn.Module,
    *,
    include_types: Sequence[type[nn.Module] | str] | None = None,
    exclude_types: Sequence[type[nn.Module] | str] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    prune_first: bool = True,
    prune_last: bool = True,
) -> list[Target]:
    """Prunable weights in module order.

    `include`/`exclude` are fnmatch globs on module names; each must match at least one
    candidate, else PruneError. `prune_first=False` keeps the first selected layer dense
    (usually the stem conv); `prune_last=False` keeps the last one (usually the classifier).
    """
    types = _resolve_types(include_types) or DEFAULT_TYPES
    drop_types = _resolve_types(exclude_types)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, types) and not isinstance(mod, drop_types)
        and getattr(mod, "weight", None) is not None
    ]
    for patterns, label in ((include, "include"), (exclude, "exclude")):
        for pat in patterns or ():
            if not any(fnmatch.fnmatchcase(n, pat) for n, _ in candidates):
                raise PruneError(
                    f"{label} pattern {pat!r} matches no prunable layer; "
                    f"candidates are e.g. {[n for n, _ in candidates[:4]]}"
                )
    if include:
        candidates = [(n, m) for n, m in candidates if any(fnmatch.fnmatchcase(n, p) for p in include)]
    if exclude:
        candidates = [
            (n, m) for n, m in candidates if not any(fnmatch.fnmatchcase(n, p) for p in exclude)
        ]
    if candidates and not prune_first:
        candidates = candidates[1:]
    if candidates and not prune_last:
        candidates = candidates[:-1]
    if not candidates:
        raise PruneError("no prunable layers selected; check include/exclude and layer types")
    return [Target(f"{n}.weight" if n else "weight", n, m) for n, m in candidates]
