"""SIGTERM as an exception: how a run, and the CLI, end cleanly when they are told to stop.

Its own light module because the CLI installs the handler before any command is imported.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

EXIT_CODE = 143
"""What a shell reports for a process ended by SIGTERM (128 + 15)."""


class Terminated(BaseException):
    """SIGTERM turned into an exception, so a run is marked `failed: terminated` on the way out
    and the CLI ends with one line and exit 143. A BaseException, like KeyboardInterrupt: code
    that records a failed evaluation with `except Exception` must not swallow it."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (in the main thread; elsewhere, e.g. in a
    Ray worker, signals are left alone)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
