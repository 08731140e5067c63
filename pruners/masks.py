"""Masks in the standard `torch.nn.utils.prune` form, and the tools around them.

A mask dict maps a parameter name as the *unpruned* model spells it (`layer1.0.conv1.weight`)
to a bool tensor, True = kept. Applied masks live as `weight_orig` + `weight_mask` with torch's
own forward pre-hook (a `prune.CustomFromMask`), so `prune.remove`, `prune.is_pruned` and other
torch tools understand them; the mask buffer stays bool (see `_install`). Every function
validates all masks before it touches the model.

Torch's hook recomputes `weight` only when the module itself is called. Some modules read a
child's weight without calling the child (`nn.MultiheadAttention` hands `out_proj.weight` to
`F.multi_head_attention_forward`), so a pruned child would keep a stale, detached weight and
never train; `_hook_readers` gives such parents a pre-hook that runs the children's own
pruning hooks first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import prune

import cuda_ext
from cuda_ext.ops import SUPPORTED
from nasbench_core.atomic import atomic_path
from nasbench_core.errors import CheckpointError
from pruners.errors import PruneError

Masks = dict[str, torch.Tensor]


def _split(name: str) -> tuple[str, str]:
    module_name, _, attr = name.rpartition(".")
    return module_name, attr


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, attr = _split(name)
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise PruneError(f"mask {name!r} names no module of the model") from None
    if getattr(module, attr + "_orig", None) is None and not isinstance(
        getattr(module, attr, None), nn.Parameter
    ):
        raise PruneError(f"mask {name!r} names no parameter of the model")
    return module, attr


def _storage(module: nn.Module, attr: str) -> torch.Tensor:
    orig = getattr(module, attr + "_orig", None)
    return orig if orig is not None else getattr(module, attr)


def is_pruned(module: nn.Module, attr: str = "weight") -> bool:
    return hasattr(module, attr + "_mask") and hasattr(module, attr + "_orig")


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise PruneError naming the first mask that does not fit the model; change nothing."""
    if not masks:
        raise PruneError("no masks given")
    for name, mask in masks.items():
        module, attr = _resolve(model, name)
        shape = tuple(_storage(module, attr).shape)
        if tuple(mask.shape) != shape:
            raise PruneError(
                f"mask {name!r} has shape {tuple(mask.shape)}, parameter has shape {shape}"
            )


def zero_pruned_(tensors: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """In place w *= m: the fused `cuda_ext` op for the dtypes it takes, `masked_fill_` for the
    rest (float64), so every float model can be pruned."""
    fused = [(t, m) for t, m in zip(tensors, masks, strict=True) if t.dtype in SUPPORTED]
    if fused:
        cuda_ext.apply_masks_([t for t, _ in fused], [m for _, m in fused])
    with torch.no_grad():
        for t, m in zip(tensors, masks, strict=True):
            if t.dtype not in SUPPORTED:
                t.masked_fill_(~m, 0)


def rewind_pruned_(tensors: Sequence[torch.Tensor], initial: Sequence[torch.Tensor],
                   masks: Sequence[torch.Tensor]) -> None:
    """In place w = w0 * m (a lottery rewind): fused where `cuda_ext` takes the dtype, a copy
    then `masked_fill_` for the rest (float64)."""
    fused = [i for i, t in enumerate(tensors) if t.dtype in SUPPORTED]
    if fused:
        cuda_ext.rewind_([tensors[i] for i in fused], [initial[i] for i in fused],
                         [masks[i] for i in fused])
    with torch.no_grad():
        for t, w0, m in zip(tensors, initial, masks, strict=True):
            if t.dtype not in SUPPORTED:
                t.copy_(w0).masked_fill_(~m, 0)


def masked_weight(module: nn.Module, attr: str) -> torch.Tensor:
    """`weight_orig * weight_mask` as torch's hook computes it, without a float copy of the mask.

    Multiplying by a bool tensor first casts it to the weight's dtype, a transient
    weight-sized tensor per layer; the fused op multiplies in place on a copy of the weight.
    """
    out = getattr(module, attr + "_orig").detach().clone()
    zero_pruned_([out], [getattr(module, attr + "_mask").bool()])
    return out


READS_DIRECTLY: dict[type[nn.Module], tuple[str, ...]] = {nn.MultiheadAttention: ("out_proj",)}
"""Module types whose forward reads these submodules' weights without calling them. (The
encoder layer's fused inference path would too, but torch skips it when hooks are attached.)"""


class RefreshPruned:
    """Forward pre-hook: run the pruning hooks of submodules the module reads directly, so their
    `weight` is `weight_orig * weight_mask` in this forward's graph (and the gradient reaches
    `weight_orig`). A plain object, so a hooked model still deep-copies and pickles."""

    def __init__(self, paths: Sequence[str]):
        self.paths = tuple(paths)

    def __call__(self, module: nn.Module, _args: Any) -> None:
        for path in self.paths:
            sub = module.get_submodule(path)
            for hook in list(sub._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    hook(sub, None)


def _has_pruning_hook(module: nn.Module) -> bool:
    return any(isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values())


def _hook_readers(model: nn.Module) -> None:
    """Give every module of a READS_DIRECTLY type whose read submodules are pruned a
    RefreshPruned hook, once (an unpruned attention keeps torch's hook-free fast paths)."""
    for module in model.modules():
        paths = next((p for cls, p in READS_DIRECTLY.items() if isinstance(module, cls)), ())
        if not any(_has_pruning_hook(module.get_submodule(p)) for p in paths):
            continue
        if not any(isinstance(h, RefreshPruned) for h in module._forward_pre_hooks.values()):
            module.register_forward_pre_hook(RefreshPruned(paths))


def _unhook_readers(model: nn.Module) -> None:
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, RefreshPruned):
                del module._forward_pre_hooks[key]


def _install(module: nn.Module, attr: str, mask: torch.Tensor) -> None:
    """`prune.custom_from_mask`'s reparametrisation, keeping the bool mask as the buffer.

    torch's version builds a ones tensor and stores a float copy of the mask, two weight-sized
    tensors per layer; a bool buffer costs a quarter of an fp32 weight, and torch's hook,
    `prune.remove` and `prune.is_pruned` treat it the same.
    """
    method = prune.CustomFromMask(mask)
    method._tensor_name = attr
    orig = getattr(module, attr)
    module.register_parameter(attr + "_orig", orig)
    del module._parameters[attr]
    module.register_buffer(attr + "_mask", mask)
    setattr(module, attr, masked_weight(module, attr))
    module.register_forward_pre_hook(method)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Masks:
    """Install `masks` (replacing any existing mask on the same parameter); returns them as bool."""
    validate_masks(model, masks)
    out: Masks = {}
    for name, mask in masks.items():
        module, attr = _resolve(model, name)
        storage = _storage(module, attr)
        mask = mask.to(device=storage.device, dtype=torch.bool)
        if is_pruned(module, attr):
            getattr(module, attr + "_mask").copy_(mask)
            setattr(module, attr, masked_weight(module, attr))
        else:
            _install(module, attr, mask)
        out[name] = mask
    _hook_readers(model)
    return out


def _mask_buffers(model: nn.Module):
    """(unpruned parameter name, its `_mask` buffer) for every pruned parameter."""
    for module_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf_name.endswith("_mask") and hasattr(module, buf_name[:-5] + "_orig"):
                attr = buf_name[:-5]
                yield (f"{module_name}.{attr}" if module_name else attr), buf


def live_masks(model: nn.Module) -> Masks:
    """The bool mask buffers themselves, no copy: they change when the model is pruned again."""
    return {name: buf if buf.dtype == torch.bool else buf.bool()
            for name, buf in _mask_buffers(model)}


def get_masks(model: nn.Module) -> Masks:
    """Bool masks of every pruned parameter, keyed by its unpruned name: a snapshot, which
    later pruning (it updates the buffers in place) leaves alone."""
    return {name: buf.to(torch.bool, copy=True) for name, buf in _mask_buffers(model)}


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake masks into plain parameters (`prune.remove`): pruned weights become stored zeros."""
    for name in live_masks(model):
        module, attr = _resolve(model, name)
        prune.remove(module, attr)
    _unhook_readers(model)
    return model


def save_masks(path: str | os.PathLike, masks: Mapping[str, torch.Tensor]) -> None:
    """Write masks as bool tensors to a safetensors file, atomically."""
    tensors = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp))


def load_masks(path: str | os.PathLike) -> Masks:
    """Read masks written by `save_masks`."""
    if not os.path.exists(path):
        raise CheckpointError(f"mask file {os.fspath(path)!r} does not exist")
    try:
        masks = safetensors.torch.load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"mask file {os.fspath(path)!r} is not a safetensors file: {exc}") from None
    return {k: v.bool() for k, v in masks.items()}


class MaskKeeper:
    """Keeps pruned weights at zero during training: re-applies masks to `weight_orig`.

    Torch's hook already zeroes the *effective* weight in forward, but momentum and weight
    decay move the stored `weight_orig`; re-masking after each step keeps both at zero, which
    lottery-ticket rewinding and `make_permanent` rely on. Use `attach(optimizer)` or call the
    keeper (e.g. from a training loop's `on_step`).
    """

    def __init__(self, model: nn.Module):
        masks = live_masks(model)
        if not masks:
            raise PruneError("model has no pruning masks to keep")
        self._entries = [(*_resolve(model, name), mask) for name, mask in masks.items()]

    @torch.no_grad()
    def __call__(self, *_args, **_kwargs) -> None:
        storages = [_storage(m, a) for m, a, _ in self._entries]
        zero_pruned_(storages, [mask for _, _, mask in self._entries])
        for module, attr, _ in self._entries:
            setattr(module, attr, masked_weight(module, attr))

    def attach(self, optimizer: torch.optim.Optimizer):
        """Re-apply after every `optimizer.step()`; returns the removable hook handle."""
        return optimizer.register_step_post_hook(self)
