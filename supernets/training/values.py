"""Checks of config values shared by `TrainHParams` and the recipes' option sections, so both
refuse a bad value with the same one-line `ConfigError` (key, what was expected, what came)."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

from nasbench_core.errors import ConfigError


def check_value(ok: Any, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def coerce_value(key: str, value: Any, hint: Any) -> Any:
    """Accept YAML-typed values for a field; ints pass for floats, bools never pass for numbers."""
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: expected {base.__name__}, got null")
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is str and isinstance(value, str))
        or (typing.get_origin(base) is dict and isinstance(value, Mapping))
    )
    if not ok:
        raise ConfigError(f"{key}: expected {base.__name__}, got {value!r}")
    return float(value) if base is float else value
