"""Which parameters a pruner may touch.

Default: every Conv/Linear `weight`, and the input projections of `nn.MultiheadAttention`
(`in_proj_weight`, or `q/k/v_proj_weight` when key/value sizes differ; its `out_proj` is a
Linear). Users narrow or widen this by module type and by
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

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def weight_attrs(module: nn.Module) -> tuple[str, ...]:
    """A module's prunable weight attributes: an attention's input projections (those it
    has; the others are None), else `weight` when it has one."""
    names = _ATTENTION_WEIGHTS if isinstance(module, nn.MultiheadAttention) else ("weight",)
    return tuple(a for a in names if getattr(module, a, None) is not None)


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
        elif isinstance(t, type) and issubclass(t, nn.Module):
            out.append(t)
        else:
            raise PruneError(f"module type {t!r} is neither a torch.nn class nor its name")
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
    """Prunable weights in module order (a module's own weights before its children's).

    `include`/`exclude` are fnmatch globs on module names; each must match at least one
    candidate, else PruneError. `prune_first=False` keeps the first selected layer dense
    (usually the stem conv); `prune_last=False` keeps the last one (usually the classifier).
    """
    for label, value in (("include", include), ("exclude", exclude),
                         ("include_types", include_types), ("exclude_types", exclude_types)):
        if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)):
            raise PruneError(f"{label}={value!r} must be a list, e.g. [{value!r}]")
    for label, patterns in (("include", include), ("exclude", exclude)):
        odd = [p for p in patterns or () if not isinstance(p, str)]
        if odd:
            raise PruneError(f"{label} pattern {odd[0]!r} must be a string (a module-name glob)")
    for label, flag in (("prune_first", prune_first), ("prune_last", prune_last)):
        if not isinstance(flag, bool):
            raise PruneError(f"{label}={flag!r} must be true or false")
    types = _resolve_types(include_types) or DEFAULT_TYPES
    drop_types = _resolve_types(exclude_types)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, types) and not isinstance(mod, drop_types) and weight_attrs(mod)
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
    return [Target(f"{n}.{a}" if n else a, n, m, a) for n, m in candidates for a in weight_attrs(m)]
