"""Where a metric is measured: `latency_ms@cpu`, `latency_ms@cuda:1`, `latency_ms@node:edge-arm`.

A latency belongs to a device, and one search may carry several: the CPU it runs on, a GPU
index, or the nodes of a Ray cluster that advertise a custom resource (`ray start
--resources='{"edge-arm": 1}'`), where the measurement runs on that node's CPU. The column of
the evaluations table is the whole name, so each device has its own column, its own predictor
(`predictors: {latency_ms_pred@cpu: PATH}`) and its own device key in the table's metadata.
A plain `latency_ms` is measured on `evaluation.device`, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nasbench_core.errors import UserError

PLACEABLE = ("latency_ms", "latency_ms_pred")
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_CUDA = re.compile(r"^cuda(?::\d+)?$")


@dataclass(frozen=True)
class Placement:
    """`device` is the torch device the measurement runs on; `node` the Ray resource naming
    the nodes it must run on (None: wherever the search evaluates)."""

    device: str
    node: str | None = None


def split(name: str) -> tuple[str, Placement | None]:
    """(`latency_ms`, Placement) for `latency_ms@DEVICE`; (name, None) without `@`."""
    base, sep, where = name.partition("@")
    if not sep:
        return name, None
    if base not in PLACEABLE:
        raise UserError(f"objective {name!r}: only {', '.join(PLACEABLE)} take @DEVICE")
    if where.startswith("node:"):
        return base, Placement("cpu", check_label(where[len("node:"):], f"objective {name!r}"))
    if where == "cpu" or _CUDA.match(where):
        return base, Placement(where)
    raise UserError(f"objective {name!r}: device {where!r} is unknown; expected cpu, cuda, "
                    "cuda:N or node:LABEL")


def check_label(label: str, what: str) -> str:
    """`label` if it can name a Ray custom resource (and not a built-in one)."""
    if not _LABEL.match(label) or label in ("CPU", "GPU", "memory", "object_store_memory"):
        raise UserError(f"{what}: {label!r} is not a custom Ray resource name (letters, digits, "
                        "_ . -; not CPU/GPU/memory)")
    return label


def node_of(name: str) -> str | None:
    """The Ray resource a metric is measured under, if any."""
    return split(name)[1].node if "@" in name else None
