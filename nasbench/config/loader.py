"""Load a YAML config, apply `--set key=value` overrides and validate it, with one-line errors.

Every message names the file (or `--set`), the dotted key and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from nasbench.config.yaml_bounds import MAX_BYTES, YamlLimitError, load_bounded
from nasbench_core.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file; empty files give {}."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config path is not a file: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:  # before reading it: a huge file is refused without its cost
        raise ConfigError(f"{path}: YAML document is {size} bytes, more than the {MAX_BYTES} allowed")
    try:
        data = load_bounded(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:  # a ValueError: first
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def yaml_problem(exc: Exception) -> str:
    """One line for a YAML load error: a bound's reason, or "malformed YAML" with the place."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    if isinstance(exc, YamlLimitError):
        return f"YAML {exc.problem}{where}"
    lines = str(exc).splitlines() or [type(exc).__name__]
    problem = getattr(exc, "problem", None) or lines[0]
    return f"malformed YAML{where}: {problem}"


RELATIVE = re.compile(r"^\+\d+$")


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """`a.b=3` -> (["a", "b"], 3); values are typed by YAML (ints, floats, bools, lists), except
    that a signed integer written with `+` stays text, so a relative value (`budget=+100`) reaches
    the config as such instead of becoming 100."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
        if RELATIVE.match(raw.strip()):
            parsed.append((parts, raw.strip()))
            continue
        try:
            value = load_bounded(raw) if raw.strip() else ""
        except YamlLimitError as exc:
            raise ConfigError(f"--set {key}: {yaml_problem(exc)}") from None
        except (yaml.YAMLError, ValueError):
            raise ConfigError(f"--set {_short_repr(item)}: value {_short_repr(raw)} is not a valid "
                              "YAML scalar/list") from None
        parsed.append((parts, value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for parts, value in parse_overrides(overrides):
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {'.'.join(parts)}: {prefix!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _allowed_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the sub-model at `loc` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            break
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    key = ".".join(str(p) for p in loc) or "<top>"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key {key!r}{hint}"
    if err["type"] == "missing":
        return f"{source}: missing required key {key!r}"
    got = err.get("input")
    got_text = f" (got {_short_repr(got)})" if not isinstance(got, dict) else ""
    error = (err.get("ctx") or {}).get("error")
    text = str(error) if err["type"] == "value_error" and error else err["msg"]
    msg = text[0].lower() + text[1:]
    return f"{source}: key {key!r}: {msg}{got_text}"


def _short_repr(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: a hostile value must not flood the line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
