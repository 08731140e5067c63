"""Progress bars: rich on a terminal, a plain start/end line otherwise, nothing with --quiet."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_settings = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _settings["quiet"] = quiet


def is_quiet() -> bool:
    return _settings["quiet"]


def echo(message: str) -> None:
    """A plain status line (suppressed by --quiet)."""
    if not is_quiet():
        print(message, flush=True)


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar when it helps a person watching, and cheaply otherwise."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if is_quiet():
        yield from iterable
        return
    if sys.stdout.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(iterable, description=description, total=total, transient=True)
        return
    start = time.perf_counter()
    count = 0
    for item in iterable:
        count += 1
        yield item
    print(f"{description}: {count} done in {time.perf_counter() - start:.1f}s", flush=True)


@contextlib.contextmanager
def quieted(quiet: bool) -> Iterator[None]:
    """`quiet` for the duration of a call, then the previous setting (the Python API's quiet=)."""
    previous = _settings["quiet"]
    _settings["quiet"] = quiet or previous
    try:
        yield
    finally:
        _settings["quiet"] = previous
