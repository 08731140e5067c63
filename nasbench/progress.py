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


class Steps:
    """`on_progress(done, total, label)` callbacks for library loops that report their own
    steps (e.g. layer-DP's "layer i of L"): one rich bar per pass on a terminal, its line at
    the end otherwise, nothing with --quiet."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None
        self._start = time.perf_counter()

    def __call__(self, done: int, total: int, label: str) -> None:
        if is_quiet():
            return
        if not sys.stdout.isatty():
            if done == total:
                print(f"{label}: done in {time.perf_counter() - self._start:.1f}s", flush=True)
                self._start = time.perf_counter()
            return
        if self._bar is None:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
        if self._task is None:
            self._task = self._bar.add_task(label, total=total)
        self._bar.update(self._task, completed=done, total=total, description=label)
        if done == total:  # a pass ends: its bar goes (transient), the next pass gets a new one
            self._bar.stop()
            self._bar, self._task = None, None
