"""Load published benchmark files without unpickling arbitrary objects.

NAS-Bench-201 ships a torch file of plain containers: `torch.load(weights_only=True)` reads it.
NATS-Bench ships bz2 pickles of plain containers: a restricted unpickler reads them and refuses
any class outside a short allow-list, so a tampered file cannot run code.
"""

from __future__ import annotations

import bz2
import io
import pickle
from pathlib import Path
from typing import Any

from nasbench_core.errors import UserError

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "complex"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_plain_pickle(path: str | Path) -> Any:
    """A (bz2-compressed or plain) pickle of plain containers, or a UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:3] == b"BZh":
            raw = bz2.decompress(raw)
        return _PlainUnpickler(io.BytesIO(raw)).load()
    except OSError as exc:
        raise UserError(f"cannot read benchmark file {path}: {exc.strerror}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"benchmark file {path} is not a plain-data pickle: {exc}") from None


def load_torch_plain(path: str | Path) -> Any:
    """A torch file of tensors and plain containers (`weights_only=True`), or a UserError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"benchmark file not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 (garbage bytes reach the unpickler's every error)
        raise UserError(f"benchmark file {path} is not a plain-data torch file: "
                        f"{torch_load_problem(Path(path), exc)}") from None


def torch_load_problem(path: Path, exc: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused `path`, in one line: an empty file gives torch
    no message, and its refusal of a pickle spans a page."""
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and isinstance(exc, pickle.UnpicklingError) and lines[0].startswith("Weights only load"):
        skip = ("Check the documentation", "Please file an issue", "(1)", "(2)")
        details = [line for line in lines[1:] if not line.startswith(skip)]
        reason = details[0] if details else "not tensors only"
        return f"torch's tensors-only loader refused it ({reason}); pickled objects are never loaded"
    return lines[0] if lines else type(exc).__name__
