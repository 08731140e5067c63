"""One registry for everything pluggable: supernet families, pruners, optimizers, objectives and
benchmarks.

Why one: every kind gets the same verbs (`register`, `list`, `get`), the same refusal of a
name registered twice, the same one-line message for an unknown name, and an optional typed
options model per entry. With an options model a method's options are checked by value
(types and ranges, unknown names) before any work starts, so a typo in a config fails in
milliseconds instead of after an hour of training.

An options model is a pydantic `BaseModel` or a pydantic dataclass whose fields are the
options (a class can be its own options model: an optimizer's settings are its fields); ranges
go in `Annotated[..., pydantic.Field(ge=...)]`, strictness in the model's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import pydantic
import pydantic.dataclasses

from nasbench_core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object, its options model (or None) and free-form metadata."""

    name: str
    obj: T
    options: type | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def option_names(self) -> list[str]:
        return [] if self.options is None else option_names(self.options)


def option_names(model: type) -> list[str]:
    """The option names an options model accepts, in declaration order."""
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return list(model.model_fields)
    if pydantic.dataclasses.is_pydantic_dataclass(model):
        return [f.name for f in dataclasses.fields(model) if f.init]
    raise TypeError(f"an options model is a pydantic model or pydantic dataclass, not {model!r}")


def _build(model: type, values: dict[str, Any]) -> Any:
    if issubclass(model, pydantic.BaseModel):
        return model.model_validate(values)
    return model(**values)


class Registry(Generic[T]):
    """Names -> objects of one kind. `kind` names it in messages ("pruning method");
    `error` is the UserError subclass raised for unknown names and bad options; `discover`
    imports the modules whose decorators fill the registry, on first lookup; `option_word`
    is what the kind calls its options in messages ("setting" for optimizers)."""

    def __init__(self, kind: str, *, error: type[UserError] = UserError,
                 discover: Callable[[], None] | None = None, option_word: str = "option") -> None:
        self.kind = kind
        self.error = error
        self.option_word = option_word
        self._discover = discover
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, options: type | None = None,
                 **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` and return it unchanged."""

        def deco(obj: T) -> T:
            self.add(name, obj, options=options, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, options: type | None = None, **meta: Any) -> Entry[T]:
        """Register `obj` under `name`; a second registration of a name is a bug, refused."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, not {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered "
                             f"(by {self._entries[name].obj!r})")
        if options is not None:
            option_names(options)  # a TypeError now, not at the first lookup
        entry = Entry(name, obj, options, MappingProxyType(dict(meta)))
        self._entries[name] = entry
        return entry

    def list(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The object registered as `name`, or a one-line error naming the known ones."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._entries)) or "none"
            raise self.error(f"unknown {self.kind} {name!r}; known: {known}") from None

    def validate(self, name: str, values: Mapping[str, Any] | None, *, where: str = "") -> Any:
        """`name`'s options model built from `values`, checked by value; a one-line error
        names the option, the value and what was expected. Entries without an options model
        take no options."""
        entry = self.entry(name)
        values = dict(values or {})
        prefix = f"{where}: " if where else ""
        allowed = entry.option_names
        unknown = [key for key in values if key not in allowed]
        if unknown:
            listed = ", ".join(allowed) or "(none)"
            word = self.option_word
            raise self.error(f"{prefix}{self.kind} {name!r} has no {word} {unknown[0]!r}; "
                             f"{word}s: {listed}")
        if entry.options is None:
            return None
        try:
            return _build(entry.options, values)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            key = str(first["loc"][0]) if first["loc"] else "options"
            value = values.get(key, first.get("input"))
            message = first["msg"].removeprefix("Value error, ")
            raise self.error(f"{prefix}{self.kind} {name!r}: {key}={value!r}: {message}") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter([self._entries[name] for name in self.list()])

    def __len__(self) -> int:
        return len(self.list())

    def _load(self) -> None:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            try:
                discover()
            except BaseException:
                self._discover = discover
                raise
