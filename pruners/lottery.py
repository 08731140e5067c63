"""Lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
Frankle et al. 2020, "Stabilizing the Lottery Ticket Hypothesis").

Level 0 trains the dense model and snapshots the weights at the rewind point; each later
level prunes a fraction of the remaining weights (globally or per layer), rewinds the kept
weights to the snapshot and retrains. Training is the caller's `train_fn(model, span,
on_step)`: it trains for `span` (a `Span`, e.g. 2 epochs) and calls `on_step(iteration,
epoch)` after every optimizer step (epoch as a float: iterations / iterations per epoch).
Each level writes its masks and weights (safetensors, atomically) and then `state.json`, so a
killed run resumes at the first unfinished level.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import cuda_ext
from nasbench_core.atomic import atomic_path, atomic_write_text
from nasbench_core.errors import ConfigError
from pruners.allocation import largest_remainder
from pruners.baselines import layerwise_masks, pruned_counts
from pruners.errors import PruneError
from pruners.magnitude import global_magnitude
from pruners.masks import Masks, apply_masks, get_masks, live_masks, masked_weight, save_masks
from pruners.selection import Target, select_targets

_SPAN = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


@dataclass(frozen=True)
class Span:
    """A training length or position: `value` iterations (`it`) or epochs (`ep`)."""

    value: int
    unit: str

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"

    def reached(self, iteration: int, epoch: float) -> bool:
        return (iteration if self.unit == "it" else epoch) >= self.value


def parse_span(text: str | Span, what: str = "rewind point") -> Span:
    """Parse '0it', '500it' or '2ep'."""
    if isinstance(text, Span):
        return text
    m = _SPAN.match(str(text))
    if not m:
        raise ConfigError(
            f"{what} {text!r} is not a step count like '0it', '500it' or an epoch count like '2ep'"
        )
    return Span(int(m.group(1)), m.group(2))


OnStep = Callable[[int, float], None]
TrainFn = Callable[[nn.Module, Span, OnStep], None]


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers keyed by unpruned names (`weight_orig` -> `weight`, no masks)."""
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith("_mask"):
            continue
        out[name.removesuffix("_orig")] = t.detach().clone()
    return out


@torch.no_grad()
def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of `model_state`; pruned weights load into `weight_orig` and get re-masked."""
    targets, initial, masks = [], [], []
    own = model.state_dict()
    for name, value in state.items():
        if name + "_orig" in own:
            module = model.get_submodule(name.rpartition(".")[0])
            attr = name.rpartition(".")[2]
            targets.append(getattr(module, attr + "_orig"))
            initial.append(value.to(targets[-1].device, targets[-1].dtype))
            masks.append(getattr(module, attr + "_mask").bool())
        elif name in own:
            own[name].copy_(value)
        else:
            raise PruneError(f"saved state has {name!r}, which the model lacks")
    if targets:
        cuda_ext.rewind_(targets, initial, masks)
    _refresh(model)


def _refresh(model: nn.Module) -> None:
    for name in live_masks(model):
        module = model.get_submodule(name.rpartition(".")[0])
        attr = name.rpartition(".")[2]
        setattr(module, attr, masked_weight(module, attr))


def _keep_masks(model: nn.Module) -> Callable[[], None]:
    entries = []
    for name, mask in live_masks(model).items():
        module = model.get_submodule(name.rpartition(".")[0])
        entries.append((getattr(module, name.rpartition(".")[2] + "_orig"), mask))

    def keep() -> None:
        if entries:
            cuda_ext.apply_masks_([w for w, _ in entries], [m for _, m in entries])

    return keep


def level_counts(targets: Sequence[Target], fraction: float, scope: str,
                 k_final: int | None) -> list[int] | int:
    """Prune counts for the next level: `fraction` of what remains, globally or per layer."""
    done = pruned_counts(targets)
    if scope == "global":
        n = sum(t.numel for t in targets)
        k = sum(done) + round(fraction * (n - sum(done)))
        return min(k, k_final) if k_final is not None else k
    sizes = [t.numel for t in targets]
    ideal = [d + fraction * (n - d) for d, n in zip(done, sizes, strict=True)]
    total = round(sum(ideal)) if k_final is None else min(round(sum(ideal)), k_final)
    return largest_remainder(ideal, total, sizes, done)


def imp_masks(targets: Sequence[Target], fraction: float, scope: str,
              k_final: int | None = None) -> list[torch.Tensor]:
    """Magnitude masks one IMP level deeper (already-pruned weights stay pruned)."""
    counts = level_counts(targets, fraction, scope, k_final)
    if scope == "global":
        masks = global_magnitude([t.tensor for t in targets], counts)  # type: ignore[arg-type]
    else:
        masks = layerwise_masks(targets, counts)  # type: ignore[arg-type]
    return [m & old if (old := t.mask) is not None else m for m, t in zip(masks, targets,
                                                                          strict=True)]


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))


def lottery_ticket(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    levels: int | None = None,
    sparsity: float | None = None,
    fraction: float = 0.2,
    scope: str = "global",
    rewind: str | Span = "0it",
    train: str | Span = "1ep",
    out_dir: str | Path | None = None,
    on_level: Callable[[int, nn.Module], Any] | None = None,
    targets: Sequence[Target] | None = None,
) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding; returns one record per level.

    Give `levels` (each prunes `fraction` of the remaining weights) or a target `sparsity`
    (levels = ceil(log(1-s)/log(1-fraction)), the last one stops at exactly round(s·N)).
    `on_level(level, model)` runs after each level's training (e.g. to evaluate). With
    `targets` defaults to `select_targets(model)`. With
    `out_dir`, level L writes `level_L/masks.safetensors` and `level_L/weights.safetensors`,
    the rewind point goes to `rewind.safetensors`, and `state.json` makes the run resumable.
    """
    if not 0.0 < fraction < 1.0:
        raise PruneError(f"fraction={fraction} must be in (0, 1)")
    if scope not in ("global", "layer"):
        raise PruneError(f"scope={scope!r} is unknown; expected 'global' or 'layer'")
    rewind_at, span = parse_span(rewind), parse_span(train, "training length")
    if rewind_at.unit == span.unit and rewind_at.value > span.value:
        raise ConfigError(f"rewind point {rewind_at} lies after the end of training ({span})")
    targets = list(targets) if targets is not None else select_targets(model)
    n = sum(t.numel for t in targets)
    k_final = None
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise PruneError(f"sparsity={sparsity} is outside [0, 1)")
        k_final = round(sparsity * n)
        # fewest levels whose compounded sparsity reaches the target; the tolerance keeps
        # log(0.64)/log(0.8) = 2.0000000000000004 from adding a level that prunes nothing
        levels = math.ceil(math.log(1 - sparsity) / math.log(1 - fraction) - 1e-9) if k_final else 0
    if levels is None or levels < 0:
        raise PruneError("give levels >= 0 or a target sparsity")

    out = Path(out_dir) if out_dir is not None else None
    state_file = out / "state.json" if out else None
    done: list[dict[str, Any]] = []
    rewind_state: dict[str, torch.Tensor] | None = None
    retrain = span  # after level 0: from the rewind point to the end (see `_retrain_span`)
    if state_file is not None and state_file.exists():
        saved = json.loads(state_file.read_text())
        done = saved["levels"]
        retrain = parse_span(saved.get("retrain", str(span)), "training length")
        rewind_state = safetensors.torch.load_file(str(out / "rewind.safetensors"))
        last = done[-1]["level"]
        if last > 0:
            apply_masks(model, safetensors.torch.load_file(str(out / f"level_{last}" /
                                                               "masks.safetensors")))
        load_model_state(model, safetensors.torch.load_file(
            str(out / f"level_{last}" / "weights.safetensors")))

    def record(level: int) -> None:
        pruned = sum(pruned_counts(targets))
        done.append({"level": level, "pruned": pruned, "sparsity": pruned / n})
        if out is not None:
            _save_state(out / f"level_{level}" / "weights.safetensors", model_state(model))
            atomic_write_text(state_file, json.dumps({"levels": done, "retrain": str(retrain)},
                                                     indent=1))
        if on_level is not None:
            on_level(level, model)

    if not done:  # level 0: dense training, snapshot at the rewind point
        snap: dict[str, dict[str, torch.Tensor]] = {}
        steps = {"last": 0, "rewind": 0}
        if rewind_at.value == 0:
            snap["w"] = model_state(model)
        keep = _keep_masks(model)

        def on_step(iteration: int, epoch: float) -> None:
            keep()
            steps["last"] = iteration
            if "w" not in snap and rewind_at.reached(iteration, epoch):
                snap["w"] = model_state(model)
                steps["rewind"] = iteration

        train_fn(model, span, on_step)
        if "w" not in snap:
            raise ConfigError(f"training ({span}) ended before the rewind point {rewind_at}")
        rewind_state = snap["w"]
        retrain = _retrain_span(span, steps["last"], steps["rewind"])
        if out is not None:
            _save_state(out / "rewind.safetensors", rewind_state)
        record(0)

    for level in range(done[-1]["level"] + 1, levels + 1):
        masks = imp_masks(targets, fraction, scope, k_final)
        named = apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
        if out is not None:
            save_masks(out / f"level_{level}" / "masks.safetensors", named)
        load_model_state(model, rewind_state)  # type: ignore[arg-type]
        keep = _keep_masks(model)
        train_fn(model, retrain, lambda it, ep, keep=keep: keep())
        _refresh(model)
        record(level)
    return done


def _retrain_span(span: Span, last_iteration: int, rewind_iteration: int) -> Span:
    """What each level trains after rewinding to iteration k: the T - k iterations left
    (Frankle et al. 2020), so every ticket sees the same total schedule as the dense run.
    A `train_fn` that never reported its iterations keeps the full span."""
    if last_iteration <= 0:
        return span
    return Span(last_iteration - rewind_iteration, "it")


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh random init (each module's `reset_parameters`) under `seed`, masks re-applied."""
    masks = live_masks(model)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if not hasattr(module, "reset_parameters"):
                continue
            pruned = [a for a in ("weight", "bias") if hasattr(module, a + "_orig")]
            for a in pruned:  # reset_parameters writes `weight`: point it at the storage
                module.__dict__[a] = getattr(module, a + "_orig")
            module.reset_parameters()
            for a in pruned:
                setattr(module, a, getattr(module, a + "_orig") * getattr(module, a + "_mask"))
    finally:
        torch.random.set_rng_state(state)
    if masks:
        load_model_state(model, {k: v for k, v in model_state(model).items() if k in masks})


def lottery_control(
    model: nn.Module,
    ticket_masks: Masks,
    kind: str,
    train_fn: TrainFn,
    *,
    rewind_state: Mapping[str, torch.Tensor] | None = None,
    train: str | Span = "1ep",
    seed: int = 1,
) -> Masks:
    """Train a control at the ticket's sparsity; the model ends trained.

    `reinit`: the ticket's masks with a fresh random initialisation (Frankle & Carbin's
    control). `random`: random masks with the ticket's per-layer counts, rewound to
    `rewind_state` (the ticket's rewind snapshot; the model's current weights if None).
    """
    if kind not in ("reinit", "random"):
        raise PruneError(f"control {kind!r} is unknown; expected 'reinit' or 'random'")
    span = parse_span(train, "training length")
    if kind == "reinit":
        apply_masks(model, ticket_masks)
        reinitialize(model, seed)
    else:
        targets = [Target(k, k.rpartition(".")[0], model.get_submodule(k.rpartition(".")[0]),
                          k.rpartition(".")[2]) for k in ticket_masks]
        counts = [int((~ticket_masks[t.name]).sum()) for t in targets]
        masks = layerwise_masks(targets, counts, score="random", seed=seed)
        apply_masks(model, {t.name: m for t, m in zip(targets, masks, strict=True)})
        if rewind_state is not None:
            load_model_state(model, rewind_state)
        else:
            load_model_state(model, model_state(model))
    keep = _keep_masks(model)
    train_fn(model, span, lambda it, ep: keep())
    _refresh(model)
    return get_masks(model)
