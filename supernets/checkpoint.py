"""Supernet checkpoints: safetensors for tensors, JSON for everything else; never a pickle.

A checkpoint `<stem>` is three files: `<stem>.safetensors` (weights), `<stem>.optim.safetensors`
(optimizer state tensors) and `<stem>.json` (build config, space fingerprint, optimizer and
scheduler scalars, caller metadata such as epoch, step and RNG states). Each file is written
atomically and the JSON last, so a checkpoint whose JSON exists is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from nasbench_core.atomic import atomic_path, atomic_write_text
from nasbench_core.errors import CheckpointError, UserError
from nasbench_core.readers import check_safetensors

FORMAT = "nasbench.checkpoint/1"
RESERVED = ("format", "build_config", "space_fingerprint", "space", "mos", "mos_router_input", "optimizer",
            "scheduler")
MOS_ROUTER_INPUT = "active-only"
"""What a MoS router was trained on: arch features with inactive blocks zeroed. Checkpoints
from before that (their router saw inactive blocks' choices) would compute other functions."""
_EPOCH_STEM = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?$")


# Keys every checkpoint document has had since its format: the loaders index them directly.
DOC_KEYS = ("build_config", "space_fingerprint")

def save_checkpoint(
    path_stem: str | Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<stem>.safetensors` (+ `.optim.safetensors`) and `<stem>.json`; returns the stem."""
    stem = Path(path_stem)
    meta = dict(meta or {})
    clash = [k for k in meta if k in RESERVED]
    if clash:
        raise ValueError(f"checkpoint meta may not use reserved keys {clash}")
    build_config = net.build_config()
    doc: dict[str, Any] = {
        "format": FORMAT,
        "build_config": build_config,
        "space_fingerprint": net.space.fingerprint(),
        "space": net.space.to_dict(),
        "mos": bool(build_config.get("mos")),
        **({"mos_router_input": MOS_ROUTER_INPUT} if build_config.get("mos") else {}),
        **meta,
    }
    with atomic_path(_file(stem, ".safetensors")) as tmp:
        save_model(net, str(tmp), metadata={"format": "pt", "nasbench": FORMAT})
    if optimizer is not None:
        tensors, doc["optimizer"] = _split_optimizer_state(optimizer)
        with atomic_path(_file(stem, ".optim.safetensors")) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "nasbench": FORMAT})
    if scheduler is not None:
        doc["scheduler"] = scheduler.state_dict()
    atomic_write_text(_file(stem, ".json"), json.dumps(doc, indent=1))
    return stem


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON document of a checkpoint (given its stem, any of its files, or a directory)."""
    return _read_doc(resolve_checkpoint(path))


def load_checkpoint(
    path: str | Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer/scheduler state) into existing objects; returns the JSON meta.

    Refuses, with a CheckpointError, a checkpoint of another search space, a mixture-of-supernets
    checkpoint into a plain supernet (or the reverse) and tensors of other names or shapes.
    """
    stem = resolve_checkpoint(path)
    doc = _read_doc(stem)
    _check_compatible(stem, doc, net)
    weights = _file(stem, ".safetensors")
    _check_tensors(stem, weights, net)
    missing, unexpected = load_model(net, weights, strict=False)
    if missing or unexpected:
        names = sorted(missing)[:3] or sorted(unexpected)[:3]
        kind = "lacks" if missing else "has extra"
        raise CheckpointError(f"checkpoint {stem} {kind} tensors {names} for this supernet")
    if optimizer is not None:
        _load_optimizer_state(stem, doc, optimizer)
    if scheduler is not None:
        if "scheduler" not in doc:
            raise CheckpointError(f"checkpoint {stem} has no scheduler state to resume from")
        scheduler.load_state_dict(doc["scheduler"])
    return doc


def verify_checkpoint(path: str | Path, net: nn.Module) -> Path:
    """Everything `load_checkpoint(path, net, optimizer)` would refuse in the files, found
    without loading a tensor (JSON document, compatibility, tensor headers and shapes, the
    optimizer file's header); returns the stem. A resume runs it before reopening its run."""
    stem = resolve_checkpoint(path)
    doc = _read_doc(stem)
    _check_compatible(stem, doc, net)
    _check_tensors(stem, _file(stem, ".safetensors"), net)
    if "optimizer" in doc:
        check_safetensors(_file(stem, ".optim.safetensors"), CheckpointError)
    return stem


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the supernet a checkpoint was saved from (`supernets.create`) and load its weights."""
    from supernets.registry import create

    stem = resolve_checkpoint(path)
    doc = _read_doc(stem)
    config = dict(doc["build_config"])
    name = config.pop("name", None)
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {stem} has no supernet family name in build_config")
    try:
        net = create(name, **config)
    except UserError as exc:
        raise CheckpointError(f"checkpoint {stem} cannot be rebuilt: {exc}") from None
    meta = load_checkpoint(stem, net)
    return net.to(device), meta


def epoch_stem(directory: str | Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:04d}"


def step_stem(directory: str | Path, epoch: int, step: int) -> Path:
    """A mid-epoch checkpoint: `epoch` epochs done and `step` steps into the next one. It sorts
    after `epoch_<epoch>` and before `epoch_<epoch + 1>`."""
    return Path(directory) / f"epoch_{epoch:04d}_step_{step:06d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete `epoch_NNNN` and `epoch_NNNN_step_SSSSSS` checkpoints in `directory`, oldest
    first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for meta in directory.glob("epoch_*.json"):
        match = _EPOCH_STEM.match(meta.name[: -len(".json")])
        stem = meta.with_name(meta.name[: -len(".json")])
        if match and _file(stem, ".safetensors").exists():
            found.append(((int(match.group(1)), int(match.group(2) or 0)), stem))
    return [stem for _, stem in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    stems = list_checkpoints(directory)
    return stems[-1] if stems else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (JSON first: no half checkpoints)."""
    for stem in list_checkpoints(directory)[:-keep]:
        for suffix in (".json", ".optim.safetensors", ".safetensors"):
            _file(stem, suffix).unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint stem from a stem, one of its files, or a directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint (epoch_NNNN.json + .safetensors) in {path}")
        return latest
    name = path.name
    for suffix in (".optim.safetensors", ".safetensors", ".json"):
        if name.endswith(suffix):
            path = path.with_name(name[: -len(suffix)])
            break
    if not _file(path, ".json").exists():
        raise CheckpointError(
            f"no checkpoint at {path}: expected {path.name}.json and {path.name}.safetensors "
            "(pickled .pt/.pth files are never loaded)"
        )
    return path


# -- internals -------------------------------------------------------------------------------
def _file(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _read_doc(stem: Path) -> dict[str, Any]:
    try:
        doc = json.loads(_file(stem, ".json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {stem}.json is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{stem}.json is not a nasbench checkpoint (format {FORMAT})")
    missing = [key for key in DOC_KEYS if key not in doc]
    if missing or not isinstance(doc["build_config"], dict):
        raise CheckpointError(f"checkpoint {stem}.json lacks {missing or ['a build_config object']} "
                              "(truncated or edited by hand?)")
    return doc


def _describe(config: Mapping[str, Any]) -> str:
    keys = ("name", "preset", "width_mult", "num_classes", "in_chans")
    return ", ".join(f"{k}={config[k]!r}" for k in keys if k in config)


def _check_compatible(stem: Path, doc: dict[str, Any], net: nn.Module) -> None:
    ours = net.build_config()
    if bool(doc.get("mos")) != bool(ours.get("mos")):
        theirs_kind = "a mixture-of-supernets" if doc.get("mos") else "a plain supernet"
        ours_kind = "a mixture-of-supernets" if ours.get("mos") else "a plain supernet"
        raise CheckpointError(
            f"checkpoint {stem} holds {theirs_kind} but the model is {ours_kind}; "
            "set supernet.mos to match the checkpoint"
        )
    if doc.get("mos") and doc.get("mos_router_input") != MOS_ROUTER_INPUT:
        raise CheckpointError(
            f"checkpoint {stem} is a mixture-of-supernets whose router was trained on the old "
            "arch features (inactive blocks included); retrain it with this version"
        )
    if doc.get("space_fingerprint") != net.space.fingerprint():
        raise CheckpointError(
            f"checkpoint {stem} was trained on another search space "
            f"({_describe(doc['build_config'])}, space {doc.get('space_fingerprint')}) than the "
            f"model ({_describe(ours)}, space {net.space.fingerprint()})"
        )


def _check_tensors(stem: Path, weights: Path, net: nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
                shape = tuple(fh.get_slice(key).get_shape())
                if key in expected and expected[key] != shape:
                    raise CheckpointError(
                        f"checkpoint {stem} tensor {key!r} has shape {list(shape)}, the model "
                        f"expects {list(expected[key])} (different num_classes/in_chans/width?)"
                    )
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint weights {weights} are unreadable: {exc}") from None


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    info = {
        "class": type(optimizer).__name__,
        "param_groups": state_dict["param_groups"],
        "scalars": scalars,
    }
    return tensors, info


def _load_optimizer_state(stem: Path, doc: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    info = doc.get("optimizer")
    if info is None:
        raise CheckpointError(f"checkpoint {stem} has no optimizer state to resume from")
    if info["class"] != type(optimizer).__name__:
        raise CheckpointError(
            f"checkpoint {stem} was trained with {info['class']}, "
            f"not {type(optimizer).__name__}; resume with the same train.optimizer"
        )
    try:
        tensors = load_file(str(_file(stem, ".optim.safetensors")))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {stem} optimizer state is unreadable: {exc}") from None
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in info["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    for name, tensor in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = tensor
    try:
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {stem} optimizer state does not fit: {exc}") from None
