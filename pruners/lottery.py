"""Lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
Frankle et al. 2020, "Stabilizing the Lottery Ticket Hypothesis"; open_lth's conventions).

Level 0 trains the dense model from step 0 to `train` and snapshots the weights at the rewind
point k; each later level prunes a fraction of the remaining weights (globally or per layer),
rewinds the kept weights to the snapshot and trains again from k to the end. Training is the
caller's `train_fn(model, start, end, on_step)`: it trains from schedule position `start` to
`end` (two `Span`s, e.g. `500it` and `2ep`), so a learning-rate schedule and the data order
continue from iteration k after a rewind, and it calls `on_step(iteration, epoch)` after every
optimizer step with the absolute position (epoch as a float: iterations / iterations per
epoch).

By default the output layer (the last selected layer) stays dense, as open_lth's
`pruning_layers_to_ignore`; `output_rate` prunes it at its own rate instead (Frankle & Carbin
prune it at half the rate). Controls at the final sparsity: `random` (uniformly random masks
with the ticket's per-layer counts) and `reinit` (the ticket's masks on weights re-drawn from
the model's own initialisation).

Each level's training runs under the seeded random state `seed + level` (restored afterwards),
and writes its masks and weights (safetensors, atomically) before `state.json` records it, so
a killed run resumes at the first unfinished level and ends bitwise equal to an uninterrupted
one on CPU, given a `train_fn` whose data order depends only on the step (as
`nasbench.classify.adam_train_fn`'s does). `state.json` also holds the settings: a resume that
changes any of them is refused.
"""

from __future__ import annotations

import copy
import fnmatch
import json
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
from nasbench_core.readers import check_safetensors, read_json
from nasbench_core.seeding import seeded, torch_generator
from pruners.allocation import largest_remainder
from pruners.baselines import pruned_counts
from pruners.errors import PruneError
from pruners.magnitude import global_magnitude
from pruners.masks import (
    Masks,
    apply_masks,
    get_masks,
    live_masks,
    masked_weight,
    rewind_pruned_,
    save_masks,
    zero_pruned_,
)
from pruners.selection import Target, select_targets

_SPAN = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")
CONTROLS = ("random", "reinit")


@dataclass(frozen=True)
class Span:
    """A training length or position: `value` iterations (`it`) or epochs (`ep`)."""

    value: int
    unit: str

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"

    def reached(self, iteration: int, epoch: float) -> bool:
        return (iteration if self.unit == "it" else epoch) >= self.value

    def steps(self, per_epoch: int) -> int:
        """This position in iterations, with `per_epoch` iterations to an epoch."""
        return self.value if self.unit == "it" else self.value * per_epoch


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


START = Span(0, "it")
OnStep = Callable[[int, float], None]
TrainFn = Callable[[nn.Module, Span, Span, OnStep], None]
"""`train_fn(model, start, end, on_step)`: train from schedule position `start` to `end`."""
InitFn = Callable[[int], Mapping[str, torch.Tensor]]
"""`reinit_fn(seed)`: a freshly initialised state dict (unpruned names) for the reinit control."""


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
        rewind_pruned_(targets, initial, masks)
    _refresh(model)


def _refresh(model: nn.Module) -> None:
    for name in live_masks(model):
        module = model.get_submodule(name.rpartition(".")[0])
        attr = name.rpartition(".")[2]
        setattr(module, attr, masked_weight(module, attr))


def _keep_masks(model: nn.Module) -> Callable[..., None]:
    entries = []
    for name, mask in live_masks(model).items():
        module = model.get_submodule(name.rpartition(".")[0])
        entries.append((getattr(module, name.rpartition(".")[2] + "_orig"), mask))

    def keep(*_: Any) -> None:
        if entries:
            zero_pruned_([w for w, _ in entries], [m for _, m in entries])

    return keep


@dataclass(frozen=True)
class Group:
    """Targets pruned together at one rate per level: `members` index the targets; a pooled
    group ranks its members' weights globally, one-member groups are a layer on its own."""

    members: tuple[int, ...]
    rate: float


def plan_groups(targets: Sequence[Target], fraction: float, scope: str,
                layers_to_ignore: Sequence[str] | None = None,
                output_rate: float | None = None) -> tuple[list[Group], list[str]]:
    """The prune groups of a lottery run and the names of the layers it keeps dense.

    `layers_to_ignore` are fnmatch patterns on parameter names (`fc.weight`, `head.*`); None
    keeps the output layer (the last target) dense, unless `output_rate` prunes it at that rate.
    """
    names = [t.name for t in targets]
    output = names[-1]
    if layers_to_ignore is None:
        layers_to_ignore = [] if output_rate is not None else [output]
    for pattern in layers_to_ignore:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise PruneError(f"layers_to_ignore pattern {pattern!r} matches no pruned layer; "
                             f"layers are e.g. {names[:3] + names[-1:]}")
    ignored = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in layers_to_ignore)]
    if output_rate is not None and output in ignored:
        raise PruneError(f"output_rate={output_rate} prunes the output layer {output!r}, "
                         "which layers_to_ignore keeps dense")
    rest = [i for i, n in enumerate(names) if n not in ignored
            and not (output_rate is not None and n == output)]
    if not rest and output_rate is None:
        raise PruneError("layers_to_ignore keeps every selected layer dense; nothing to prune")
    groups = ([Group(tuple(rest), fraction)] if scope == "global" and rest
              else [Group((i,), fraction) for i in rest])
    if output_rate is not None:
        groups.append(Group((len(names) - 1,), output_rate))
    return groups, ignored


def level_counts(sizes: Sequence[int], done: Sequence[int], groups: Sequence[Group],
                 k_final: int | None) -> list[int]:
    """Per-group prune totals one level deeper: each group loses `rate` of what it has left;
    the level that reaches `k_final` shrinks every group's step in proportion to stop there."""
    n = [sum(sizes[i] for i in g.members) for g in groups]
    d = [sum(done[i] for i in g.members) for g in groups]
    ideal = [dg + g.rate * (ng - dg) for g, ng, dg in zip(groups, n, d, strict=True)]
    total = round(sum(ideal))
    if k_final is not None and total > k_final:
        scale = (k_final - sum(d)) / (sum(ideal) - sum(d))
        ideal = [dg + (i - dg) * scale for i, dg in zip(ideal, d, strict=True)]
        total = k_final
    return largest_remainder(ideal, total, n, d)


def count_levels(sizes: Sequence[int], done: Sequence[int], groups: Sequence[Group],
                 k_final: int) -> int:
    """The fewest levels whose compounded pruning reaches `k_final` (simulated in integers, so
    round-off neither adds a level that prunes nothing nor stops one short)."""
    group_sizes = [sum(sizes[i] for i in g.members) for g in groups]
    group_done = [sum(done[i] for i in g.members) for g in groups]
    alone = [Group((j,), g.rate) for j, g in enumerate(groups)]
    fixed = sum(done) - sum(group_done)  # pruned earlier in layers the lottery keeps
    if k_final > fixed + sum(group_sizes):
        raise PruneError(f"a lottery ticket can prune at most {fixed + sum(group_sizes)} of "
                         f"{sum(sizes)} weights with these layers_to_ignore, not {k_final}")
    levels = 0
    while fixed + sum(group_done) < k_final:
        nxt = level_counts(group_sizes, group_done, alone, k_final - fixed)
        if sum(nxt) == sum(group_done):
            raise PruneError(f"pruning stalls at {fixed + sum(group_done)} of {k_final} weights: "
                             "the rates round to zero; use a larger fraction")
        group_done, levels = nxt, levels + 1
    return levels


def imp_masks(targets: Sequence[Target], groups: Sequence[Group],
              k_final: int | None = None) -> dict[str, torch.Tensor]:
    """Magnitude masks one IMP level deeper for every grouped target (pruned weights stay
    pruned); `k_final` counts only the grouped targets' pruned weights."""
    sizes, done = [t.numel for t in targets], pruned_counts(targets)
    totals = level_counts(sizes, done, groups, k_final)
    out: dict[str, torch.Tensor] = {}
    for g, total in zip(groups, totals, strict=True):
        members = [targets[i] for i in g.members]
        masks = global_magnitude([t.tensor for t in members], total)
        for t, m in zip(members, masks, strict=True):
            out[t.name] = m & old if (old := t.mask) is not None else m
    return out


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))


def _load(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _check_settings(state_file: Path, saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise PruneError(f"lottery state in {state_file.parent} was made with {key}="
                             f"{_short(saved.get(key))}, not {key}={_short(wanted.get(key))}: "
                             "resume with the same settings or start a new run")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resumable(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a lottery run's state for `lottery_ticket` to continue."""
    return (Path(out_dir) / "state.json").exists()


def read_state(state_file: Path) -> dict[str, Any]:
    """`state.json`: settings and the finished levels and controls; a damaged file is one
    PruneError line naming it."""
    state = read_json(state_file, PruneError, required=("settings", "levels", "controls"))
    levels, controls = state["levels"], state["controls"]
    if not (isinstance(state["settings"], dict) and isinstance(levels, list)
            and isinstance(controls, list)
            and all(isinstance(e, dict) and isinstance(e.get("level"), int) for e in levels)
            and all(isinstance(e, dict) and e.get("control") in CONTROLS for e in controls)):
        raise PruneError(f"{state_file} is not a lottery state (edited by hand?)")
    return state


def check_resumable(out_dir: str | Path) -> dict[str, Any]:
    """The state of the lottery run in `out_dir`, with every safetensors file it names checked
    readable (headers only): what a resume would load, refused before it starts."""
    out = Path(out_dir)
    state = read_state(out / "state.json")
    files = [out / "init.safetensors"]
    if state["levels"]:
        files.append(out / "rewind.safetensors")
    for entry in [*state["levels"], *state["controls"]]:
        name = f"control_{entry['control']}" if "control" in entry else f"level_{entry['level']}"
        files.append(out / name / "weights.safetensors")
        if entry.get("level") != 0 or "control" in entry:  # level 0 is dense: no masks
            files.append(out / name / "masks.safetensors")
    for path in files:
        check_safetensors(path, PruneError)
    return state


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
    layers_to_ignore: Sequence[str] | None = None,
    output_rate: float | None = None,
    controls: Sequence[str] = (),
    seed: int | None = None,
    reinit_fn: InitFn | None = None,
    out_dir: str | Path | None = None,
    on_level: Callable[[int, nn.Module], Any] | None = None,
    on_control: Callable[[str, int, nn.Module], Any] | None = None,
    targets: Sequence[Target] | None = None,
) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding; returns one record per level, then one per
    control (with a `control` key).

    Give `levels` (each prunes `fraction` of the remaining weights) or a target `sparsity` of
    all `targets` (the fewest levels that reach round(s·N); the last stops there exactly).
    `layers_to_ignore` / `output_rate`: see `plan_groups`. `controls` (`random`, `reinit`) are
    trained on copies at the final masks, over the ticket's schedule (`rewind` to `train`);
    `reinit` re-draws from the initial weights snapshotted here (or `reinit_fn(seed)`).
    `on_level(level, model)` runs after each level's training, `on_control(kind, level,
    control_model)` after each control's (e.g. to evaluate). `seed` (default: torch's initial
    seed) seeds each level's training. With `out_dir`: `init.safetensors`,
    `rewind.safetensors`, `level_L/{masks,weights}.safetensors`,
    `control_<kind>/{masks,weights}.safetensors` and `state.json`, which makes the run
    resumable. The model ends as the ticket, trained.
    """
    if not 0.0 < fraction < 1.0:
        raise PruneError(f"fraction={fraction} must be in (0, 1)")
    if output_rate is not None and not 0.0 < output_rate < 1.0:
        raise PruneError(f"output_rate={output_rate} must be in (0, 1)")
    if scope not in ("global", "layer"):
        raise PruneError(f"scope={scope!r} is unknown; expected 'global' or 'layer'")
    for kind in controls:
        if kind not in CONTROLS:
            raise PruneError(f"control {kind!r} is unknown; expected one of {list(CONTROLS)}")
    rewind_at, span = parse_span(rewind), parse_span(train, "training length")
    if rewind_at.unit == span.unit and rewind_at.value > span.value:
        raise ConfigError(f"rewind point {rewind_at} lies after the end of training ({span})")
    targets = list(targets) if targets is not None else select_targets(model)
    groups, ignored = plan_groups(targets, fraction, scope, layers_to_ignore, output_rate)
    sizes, n = [t.numel for t in targets], sum(t.numel for t in targets)
    k_final = None
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise PruneError(f"sparsity={sparsity} is outside [0, 1)")
        k_final = round(sparsity * n)
        levels = count_levels(sizes, pruned_counts(targets), groups, k_final)
    if levels is None or levels < 0:
        raise PruneError("give levels >= 0 or a target sparsity")
    fixed = sum(pruned_counts(targets)) - sum(pruned_counts([targets[i] for g in groups
                                                             for i in g.members]))
    k_groups = None if k_final is None else k_final - fixed
    seed = torch.initial_seed() if seed is None else seed
    settings = {"levels": levels, "pruned_total": k_final, "fraction": fraction, "scope": scope,
                "rewind": str(rewind_at), "train": str(span), "layers_to_ignore": ignored,
                "output_rate": output_rate, "controls": list(controls), "seed": seed,
                "targets": dict(zip([t.name for t in targets], sizes, strict=True))}

    out = Path(out_dir) if out_dir is not None else None
    state_file = out / "state.json" if out else None
    done: list[dict[str, Any]] = []
    done_controls: list[dict[str, Any]] = []
    rewind_state: dict[str, torch.Tensor] | None = None
    if state_file is not None and state_file.exists():
        saved = read_state(state_file)
        _check_settings(state_file, saved["settings"], settings)
        done, done_controls = saved["levels"], saved["controls"]
        init = _load(out / "init.safetensors")
        if done:
            rewind_state = _load(out / "rewind.safetensors")
            last = done[-1]["level"]
            if last > 0:
                apply_masks(model, _load(out / f"level_{last}" / "masks.safetensors"))
            load_model_state(model, _load(out / f"level_{last}" / "weights.safetensors"))
        else:
            load_model_state(model, init)
    else:
        init = model_state(model)
        if out is not None:
            _save_state(out / "init.safetensors", init)

    def save() -> None:
        if state_file is not None:
            atomic_write_text(state_file, json.dumps(
                {"settings": settings, "levels": done, "controls": done_controls}, indent=1))

    def record(level: int) -> None:
        pruned = sum(pruned_counts(targets))
        done.append({"level": level, "pruned": pruned, "sparsity": pruned / n})
        if out is not None:
            _save_state(out / f"level_{level}" / "weights.safetensors", model_state(model))
        save()
        if on_level is not None:
            on_level(level, model)

    if not done:  # level 0: dense training, snapshot at the rewind point
        save()
        snap: dict[str, dict[str, torch.Tensor]] = {}
        if rewind_at.value == 0:
            snap["w"] = model_state(model)
        keep = _keep_masks(model)

        def on_step(iteration: int, epoch: float) -> None:
            keep()
            if "w" not in snap and rewind_at.reached(iteration, epoch):
                snap["w"] = model_state(model)

        with seeded(seed):
            train_fn(model, START, span, on_step)
        _refresh(model)
        if "w" not in snap:
            raise ConfigError(f"training ({span}) ended before the rewind point {rewind_at}")
        rewind_state = snap["w"]
        if out is not None:
            _save_state(out / "rewind.safetensors", rewind_state)
        record(0)

    for level in range(done[-1]["level"] + 1, levels + 1):
        named = apply_masks(model, imp_masks(targets, groups, k_groups))
        if out is not None:
            save_masks(out / f"level_{level}" / "masks.safetensors", named)
        load_model_state(model, rewind_state)  # type: ignore[arg-type]
        with seeded(seed + level):
            train_fn(model, rewind_at, span, _keep_masks(model))
        _refresh(model)
        record(level)

    ticket = get_masks(model)
    finished = {c["control"] for c in done_controls}
    for i, kind in enumerate(controls, start=1):
        if kind in finished:
            continue
        control = copy.deepcopy(model)
        masks = lottery_control(control, ticket, kind, train_fn, rewind_state=rewind_state,
                                init_state=init, reinit_fn=reinit_fn, rewind=rewind_at,
                                train=span, seed=seed + 1_000_000 * i + levels)
        pruned = sum(int((~m).sum()) for m in masks.values())
        done_controls.append({"control": kind, "level": levels, "pruned": pruned,
                              "sparsity": pruned / n})
        if out is not None:
            save_masks(out / f"control_{kind}" / "masks.safetensors", masks)
            _save_state(out / f"control_{kind}" / "weights.safetensors", model_state(control))
        save()
        if on_control is not None:
            on_control(kind, levels, control)
    return done + done_controls


@torch.no_grad()
def reinitialize(model: nn.Module, init_state: Mapping[str, torch.Tensor], seed: int) -> None:
    """Re-draw every floating-point parameter from its initial values in `init_state` (a random
    permutation per tensor: the same per-layer distribution, new places), buffers as initial;
    the model's masks stay and are re-applied.

    Drawing from the model's own initialisation keeps each layer's scale (e.g. torchvision's
    kaiming-normal convs); a module's `reset_parameters` may use another rule entirely.
    """
    gen = torch_generator(seed)
    params = {name.removesuffix("_orig") for name, _ in model.named_parameters()}
    drawn = {}
    for name in sorted(init_state):  # by name: a state read back from disk comes sorted
        value = init_state[name]
        if name in params and value.is_floating_point() and value.numel() > 1:
            flat = value.reshape(-1)
            value = flat[torch.randperm(flat.numel(), generator=gen).to(flat.device)].view_as(value)
        drawn[name] = value
    load_model_state(model, drawn)


def random_masks(model: nn.Module, ticket_masks: Masks, seed: int) -> Masks:
    """Uniformly random masks with each layer's pruned count from `ticket_masks`, drawn afresh:
    whatever masks the model already has play no part."""
    gen = torch_generator(seed)
    out = {}
    for name, mask in ticket_masks.items():
        scores = torch.rand(mask.shape, generator=gen).add_(1.0)
        out[name] = cuda_ext.global_magnitude_masks([scores], int((~mask).sum()))[0]
    apply_masks(model, out)  # validates the names first
    return out


def lottery_control(
    model: nn.Module,
    ticket_masks: Masks,
    kind: str,
    train_fn: TrainFn,
    *,
    rewind_state: Mapping[str, torch.Tensor] | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    reinit_fn: InitFn | None = None,
    rewind: str | Span = "0it",
    train: str | Span = "1ep",
    seed: int = 1,
) -> Masks:
    """Train a control at the ticket's per-layer sparsity over the ticket's schedule (`rewind`
    to `train`), in place; returns its masks and the model ends trained.

    `random` (Frankle & Carbin's random pruning): uniformly random masks with the ticket's
    per-layer counts, on the ticket's rewind weights `rewind_state`. `reinit` (their random
    reinitialisation): the ticket's masks on weights re-drawn from the model's initialisation,
    `init_state` (see `reinitialize`) or `reinit_fn(seed)`, a user's fresh init.
    """
    if kind not in CONTROLS:
        raise PruneError(f"control {kind!r} is unknown; expected one of {list(CONTROLS)}")
    rewind_at, span = parse_span(rewind), parse_span(train, "training length")
    if kind == "random":
        if rewind_state is None:
            raise PruneError("the random control needs rewind_state, the ticket's rewind weights")
        random_masks(model, ticket_masks, seed)
        load_model_state(model, rewind_state)
    else:
        apply_masks(model, ticket_masks)
        if reinit_fn is not None:
            load_model_state(model, reinit_fn(seed))
        elif init_state is not None:
            reinitialize(model, init_state, seed)
        else:
            raise PruneError("the reinit control needs init_state (the initial weights) or reinit_fn")
    with seeded(seed):
        train_fn(model, rewind_at, span, _keep_masks(model))
    _refresh(model)
    return {k: v for k, v in get_masks(model).items() if k in ticket_masks}
