"""Readers of the files the tool stores (Parquet tables, JSON documents) that turn a truncated,
garbage or mis-shaped file into one `UserError` line naming it, instead of pyarrow's or json's
multi-line traceback: the file may have been cut short by a crash or edited by hand."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nasbench_core.errors import UserError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def read_parquet(path: str | Path, error: type[UserError] = UserError) -> Any:
    """The `pyarrow.Table` stored at `path`; a file pyarrow cannot read raises `error`."""
    import pyarrow.parquet as pq

    return _parquet(pq.read_table, path, error)


def read_parquet_schema(path: str | Path, error: type[UserError] = UserError) -> Any:
    """The schema of the Parquet file at `path` without its rows; unreadable raises `error`."""
    import pyarrow.parquet as pq

    return _parquet(pq.read_schema, path, error)


def _parquet(read: Any, path: str | Path, error: type[UserError]) -> Any:
    """`read(path)` with pyarrow's errors turned into one `error` line naming the file."""
    import pyarrow as pa

    try:
        return read(path)
    except (pa.ArrowException, OSError) as exc:
        raise error(f"{path} is not a readable Parquet table "
                    f"(truncated or corrupted?): {_first_line(exc)}") from None


def read_json(path: str | Path, error: type[UserError] = UserError, *,
              required: Iterable[str] = ()) -> Any:
    """The JSON document at `path`; not UTF-8, not JSON, not an object when `required` keys are
    asked for, or lacking one of them raises `error` naming the file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not readable JSON (truncated or corrupted?): "
                    f"{_first_line(exc)}") from None
    required = list(required)
    if required and not isinstance(doc, dict):
        raise error(f"{path} holds a JSON {type(doc).__name__}, not an object")
    missing = [key for key in required if key not in doc]
    if missing:
        raise error(f"{path} lacks the key(s) {missing} (truncated or edited by hand?)")
    return doc


def check_safetensors(path: str | Path, error: type[UserError] = UserError) -> list[str]:
    """The tensor names of the safetensors file at `path`, reading only its header (which
    safetensors checks covers the file exactly: a truncated or padded file fails); unreadable
    raises `error` naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())  # noqa: SIM118 (safe_open is not iterable)
    except (OSError, SafetensorError) as exc:
        raise error(f"{path} is not a readable safetensors file (truncated or corrupted?): "
                    f"{_first_line(exc)}") from None


def read_csv(path: str | Path, error: type[UserError] = UserError) -> Any:
    """The `pandas.DataFrame` of the CSV file the tool wrote at `path` (empty for an empty
    file). Its writer ends every row with a newline and gives every row the header's fields,
    so a file cut short, garbage, or not UTF-8 raises `error` naming the file instead of
    reading as fewer or half rows."""
    import csv
    import io

    import pandas as pd

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not a readable CSV file (truncated or corrupted?): "
                    f"{_first_line(exc)}") from None
    if not text:
        return pd.DataFrame()
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise error(f"{path} is not a readable CSV file: {_first_line(exc)}") from None
    width = len(rows[0])
    short = next((n for n, row in enumerate(rows[1:], start=2) if len(row) != width), None)
    if short is not None:
        raise error(f"{path} is cut short or corrupted: row {short} has {len(rows[short - 1])} "
                    f"fields, the header {width}")
    if not text.endswith("\n"):
        raise error(f"{path} is cut short: its last line has no newline")
    return pd.read_csv(io.StringIO(text))
