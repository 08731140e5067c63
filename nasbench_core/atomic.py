"""Atomic, durable file writes: write a sibling temp file, fsync it, `os.replace` it into
place, fsync the directory.

A process killed mid-write leaves either the old file or nothing, never half a file; and once
a write returns, a power cut or kernel crash cannot undo it or leave the new name pointing at
blocks that never reached the disk (the rename is only ordered after the data by the fsyncs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; once the caller has written and closed it, it is
    fsynced and replaces `path` atomically, and the directory entry is fsynced."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        fsync_path(tmp_path)  # the data is on disk before the name points at it
        os.replace(tmp_path, target)
        fsync_path(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush to disk a file's data (its writer, e.g. safetensors' `save_file`, has closed it)
    or a directory's entries (a file created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
