"""`pruners.prune(model, method, sparsity, **kwargs)` and the name -> pruner registry.

A pruner is `fn(model, targets, k, **kwargs) -> iterable of bool keep-masks` (one per target,
in order) that prunes exactly k weights in total; an iterator lets `prune_permanent` hold one
layer's mask at a time. `prune` validates everything first (sparsity,
selection patterns, method name, kwargs), so a bad request leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nasbench_core.registry import Entry, Registry
from pruners.errors import PruneError
from pruners.masks import Masks, apply_masks, make_permanent, zero_pruned_
from pruners.options import PrunerOptions
from pruners.selection import Target, select_targets

PrunerFn = Callable[..., Iterable[torch.Tensor]]
NEEDS = ("data", "train_fn", "finetune", "out_dir", "example_input", "on_level", "on_progress")
"""What a pruner may need besides plain options; code (a runner) supplies these, not a config."""

PRUNERS: Registry[PrunerFn] = Registry("pruning method", error=PruneError)
"""Entries: `fn(model, targets, k, options, **needs)`; `options` is an instance of the entry's
options model, `meta["needs"]` names the NEEDS it takes as keywords."""

_SELECTION_KEYS = ("include_types", "exclude_types", "include", "exclude", "prune_first",
                   "prune_last")


KINDS = ("unstructured", "semi_structured", "structured")
"""Mask pruners (`prune`), N:M mask pruners (`prune`, same form) and channel pruners (`shrink`)."""


def register_pruner(name: str, *, options: type[PrunerOptions] = PrunerOptions,
                    needs: Sequence[str] = (), kind: str = "unstructured",
                    check: Callable[[Sequence[Target], int, Any], None] | None = None,
                    ) -> Callable[[PrunerFn], PrunerFn]:
    """Register `fn` under `name` with its typed `options`; `needs` are the NEEDS a caller
    must supply for it to work well (a runner reads them from the entry). `check(targets, k,
    options)` raises PruneError for a request the method cannot meet (e.g. `min_keep` keeping
    more than remains), so it fails before any weight changes."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"pruner {name!r} declares unknown needs {unknown}; known: {NEEDS}")
    if kind not in KINDS[:2]:
        raise ValueError(f"pruner {name!r}: kind {kind!r} is not a mask kind {KINDS[:2]}")
    return PRUNERS.register(name, options=options, needs=tuple(needs), kind=kind, check=check)


def list_pruners(kind: str = "unstructured") -> list[str]:
    """Method names of one kind (`KINDS`): `structured` ones go to `pruners.shrink`."""
    if kind == "structured":
        from pruners.structured import SHRINKERS

        return SHRINKERS.list()
    if kind not in KINDS:
        raise PruneError(f"unknown pruner kind {kind!r}; known: {', '.join(KINDS)}")
    return [e.name for e in PRUNERS if e.meta.get("kind", "unstructured") == kind]


def get_pruner(name: str) -> PrunerFn:
    return PRUNERS.get(name)


def pruner_entry(name: str) -> Entry[PrunerFn]:
    return PRUNERS.entry(name)


def validate_prune_options(method: str, options: Mapping[str, Any], *, where: str = "kwargs") -> dict[str, Any]:
    """Check a config's options for `method` by value before any work: the name, each option's
    name, type and range, and that none of them is a need (those come from code)."""
    given = [key for key in options if key in NEEDS]
    if given:
        PRUNERS.entry(method)
        raise PruneError(f"{where}.{given[0]}: {method!r} gets {given[0]!r} from the runner, not from a config")
    plain = {k: v for k, v in options.items() if k not in _SELECTION_KEYS}
    PRUNERS.validate(method, plain, where=where)
    return dict(options)


def check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise PruneError(f"sparsity={sparsity!r} must be a number in [0, 1)")
    if not 0.0 <= float(sparsity) < 1.0:
        raise PruneError(f"sparsity={sparsity} is outside [0, 1)")
    return float(sparsity)


def _plan(model: nn.Module, method: str, sparsity: float,
          kwargs: dict[str, Any]) -> tuple[Callable[[], Iterable[torch.Tensor]], list[Target], int]:
    """Validate a request (nothing touched yet): its targets, k, and the pruner bound to its
    checked options and needs, ready to call."""
    s = check_sparsity(sparsity)
    entry = PRUNERS.entry(method)
    selection = {key: kwargs.pop(key) for key in _SELECTION_KEYS if key in kwargs}
    needs = {key: kwargs.pop(key) for key in entry.meta["needs"] if key in kwargs}
    options = PRUNERS.validate(method, kwargs)
    targets: list[Target] = select_targets(model, **selection)
    n = sum(t.numel for t in targets)
    k = round(s * n)
    already = sum(m.numel() - int(m.count_nonzero()) for t in targets if (m := t.mask) is not None)
    if already > k:
        raise PruneError(
            f"model already has {already} of {n} selected weights pruned ({already / n:.1%}), "
            f"more than the requested {s:.1%}; masks only grow"
        )
    if (check := entry.meta.get("check")) is not None:
        check(targets, k, options)
    return (lambda: entry.obj(model, targets, k, options, **needs)), targets, k


def check_prune(model: nn.Module, method: str, sparsity: float, **kwargs: Any) -> None:
    """Everything `prune` checks before it touches a weight (sparsity, selection, options, the
    method's own feasibility), touching nothing: a runner calls it on the built model before it
    creates a run directory or trains. Needs may be left out."""
    _plan(model, method, sparsity, dict(kwargs))


def prune(model: nn.Module, method: str, sparsity: float, **kwargs: Any) -> Masks:
    """Prune `model` in place to `sparsity` of the selected weights; returns the bool masks.

    Selection keywords (`include_types`, `exclude_types`, `include`, `exclude`,
    `prune_first`, `prune_last`) pick the layers; the rest go to the pruner. Sparsity is the
    total over the selected layers, counting weights an earlier call already pruned.
    """
    masks, targets, _ = _plan(model, method, sparsity, kwargs)
    out = {
        t.name: (m & old if (old := t.mask) is not None else m)
        for t, m in zip(targets, masks(), strict=True)
    }
    return apply_masks(model, out)


def prune_permanent(model: nn.Module, method: str, sparsity: float, **kwargs: Any) -> dict[str, int]:
    """`prune` then `make_permanent`, without ever holding every mask: for models near RAM size.

    Pruned weights become stored zeros, one layer at a time, and no mask is kept; global
    magnitude makes each layer's mask only when its turn comes, so extra memory stays near
    the largest layer's bool mask. Returns the number of zero weights per selected layer.
    """
    masks, targets, _ = _plan(model, method, sparsity, kwargs)
    out: dict[str, int] = {}
    for t, mask in zip(targets, masks(), strict=True):
        if (old := t.mask) is not None:
            mask = mask & old
        zero_pruned_([t.param.detach()], [mask])  # fused: no float copy of the mask
        out[t.name] = mask.numel() - int(mask.count_nonzero())
    if any(t.mask is not None for t in targets):
        make_permanent(model)  # earlier masks, and those of pruners that train (gradual, lottery)
    return out
