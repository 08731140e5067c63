"""One way in for every runner's config: a dict, a YAML path or the model, plus overrides.

The CLI gives `--set key=value` strings; Python callers give keyword overrides with the same
dotted keys (`**{"train.epochs": 2}`, or `train__epochs=2` where a keyword must be a name).
Both land here, so a config means the same thing from a notebook, a test and the shell.
Relative paths are made absolute against the working folder they were given from, so a run's
stored config still points at the same files when it is opened from anywhere else.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from nasbench.config.loader import apply_overrides, describe_validation_error, read_yaml
from nasbench_core.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)
ConfigInput = BaseModel | Mapping[str, Any] | str | Path | None


def resolve(
    model: type[ModelT],
    config: ConfigInput = None,
    *,
    cli_overrides: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ModelT:
    """Validate `config` plus overrides into `model`; errors are one line naming the source."""
    data, source = _as_data(model, config)
    if cli_overrides:
        data = apply_overrides(data, cli_overrides)
        source += " + --set"
    if overrides:
        data = _apply_values(data, overrides)
        source += " + overrides"
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, source)) from None
    except ConfigError as exc:  # a model's own validator (e.g. train hparams) names only the key
        raise ConfigError(f"{source}: {exc}") from None
    return absolute_paths(validated)


def _as_data(model: type[BaseModel], config: ConfigInput) -> tuple[dict[str, Any], str]:
    if config is None:
        return {}, "defaults"
    if isinstance(config, BaseModel):
        if not isinstance(config, model):
            raise ConfigError(f"expected a {model.__name__}, got a {type(config).__name__}")
        return config.model_dump(mode="python"), model.__name__
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "config dict"
    if isinstance(config, (str, Path)):
        return read_yaml(Path(config)), str(config)
    raise ConfigError(f"config must be a dict, a YAML path or a {model.__name__}, got {type(config).__name__}")


def _apply_values(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set already-typed values at dotted keys (`a.b` or `a__b`)."""
    for key, value in overrides.items():
        parts = key.replace("__", ".").split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override {key!r}: expected a dotted key, e.g. train.epochs")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, BaseModel):
                child = node[part] = child.model_dump(mode="python")
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[: depth + 1])!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def absolute_paths(config: ModelT) -> ModelT:
    """A copy of `config` whose `Path` values (at any depth) are absolute."""
    updates = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        fixed = _absolute(value)
        if fixed is not value:
            updates[name] = fixed
    return config.model_copy(update=updates) if updates else config


def _absolute(value: Any) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else Path(os.path.abspath(value))
    if isinstance(value, BaseModel):
        return absolute_paths(value)
    if isinstance(value, dict) and any(isinstance(v, Path) for v in value.values()):
        return {k: _absolute(v) for k, v in value.items()}
    return value


def stored_config(run: Any, model: type[ModelT]) -> ModelT:
    """The config a run was started with, as `model`; a run from an incompatible version is a
    one-line RunError rather than a validation traceback."""
    from nasbench_core.errors import RunError

    try:
        return model.model_validate(run.manifest.get("config", {}), context={"stored": True})
    except ValidationError as exc:
        raise RunError(f"{run.path}: its config does not fit this nasbench "
                       f"({describe_validation_error(exc, model, 'config.yaml')})") from None


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) wherever two JSON documents differ (a key missing from one is
    None): what a resume with other settings would change."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in config_differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]
