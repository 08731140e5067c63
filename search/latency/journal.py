"""The visit journal of a latency measurement: one JSON line per finished visit, so a killed
measurement resumes losing nothing but the visit in flight.

A line is `{"attempt", "round", "index", "arch_id", "samples_ms"}` (a `Visit` and the arch it
timed), appended with write + flush + fsync (`search.evaluations.EvaluationLog`) as the visit
finishes. A kill mid-write can damage only the last line: `VisitJournal.load` ignores it and
`cut_torn_tail` removes it from the file, so the next line does not glue onto it. A damaged line
anywhere else is no torn write, and neither is a well-formed line that does not fit the
measurement (another arch, a round or attempt it does not have, the wrong number of samples):
both are refused in one line naming the file, since resuming from them would mix in timings of
something else.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasbench_core.errors import RunError
from search.evaluations import EvaluationLog
from search.latency.measure import LatencySettings, Visit, VisitKey, visits_per_model

VISITS = "latency_visits.log.jsonl"
"""The journal's file name in a `latency measure` run."""

KEYS = ("attempt", "round", "index", "arch_id", "samples_ms")


def _count(value: Any, below: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < below


def _shown(value: Any) -> str:
    """A value of a hand-edited line, quoted short."""
    return repr(value)[:40]


def _misfit(record: Any, arch_ids: Sequence[str], s: LatencySettings) -> str | None:
    """Why `record` is not a visit of this measurement (None when it is one)."""
    if not isinstance(record, dict) or set(record) != set(KEYS):
        return f"expected an object with keys {', '.join(KEYS)}"
    if not _count(record["attempt"], s.max_retimes + 1):
        return f"attempt {_shown(record['attempt'])} is not in 0..{s.max_retimes}"
    if not _count(record["round"], visits_per_model(s)):
        return f"round {_shown(record['round'])} is not in 0..{visits_per_model(s) - 1}"
    if not _count(record["index"], len(arch_ids)):
        return f"index {_shown(record['index'])} is not in 0..{len(arch_ids) - 1}"
    if record["arch_id"] != arch_ids[record["index"]]:
        return f"arch {_shown(record['arch_id'])} is not subnet {record['index']} of the run"
    samples, per_visit = record["samples_ms"], -(-s.repeats // visits_per_model(s))
    if not isinstance(samples, list) or len(samples) != per_visit or not all(
            isinstance(t, float) and math.isfinite(t) and t >= 0 for t in samples):
        return f"samples_ms is not a list of {per_visit} timings"
    return None


class VisitJournal:
    """The journal of one measurement of `arch_ids` (in table order): `load` what a killed
    process finished, `record` each visit timed now. Only the process holding the run's lock
    opens it."""

    def __init__(self, path: str | Path, arch_ids: Sequence[str]):
        self.path = Path(path)
        self.arch_ids = list(arch_ids)
        self.dropped_tail = False
        self._keep: int | None = None
        self._log = EvaluationLog(self.path)

    def load(self, s: LatencySettings) -> dict[VisitKey, tuple[float, ...]]:
        """The journaled visits by key (a key's first line), checked against `s`; a damaged last
        line is ignored (`dropped_tail`), any other bad line raises a one-line RunError. Reads
        only: a refused resume leaves the file as it was."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")  # the last piece follows the last newline: empty, or torn
        done: dict[VisitKey, tuple[float, ...]] = {}
        keep = 0  # bytes up to the end of the last good line
        for number, line in enumerate(lines[:-1], start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as exc:  # also a UnicodeDecodeError
                    if number == len(lines) - 1 and not lines[-1]:  # the last line: torn
                        break
                    raise RunError(f"{self.path}: line {number} is damaged ({exc}); only the last "
                                   "line can be torn by a kill: move the file away to re-time "
                                   "every visit") from None
                why = _misfit(record, self.arch_ids, s)
                if why is not None:
                    raise RunError(f"{self.path}: line {number} is not a visit of this measurement"
                                   f" ({why}): move the file away to re-time every visit")
                key = (record["attempt"], record["round"], record["index"])
                done.setdefault(key, tuple(float(t) for t in record["samples_ms"]))
            keep += len(line) + 1
        self.dropped_tail, self._keep = keep < len(data), keep
        return done

    def cut_torn_tail(self) -> None:
        """Truncate the file to the lines `load` kept (call it holding the run's lock)."""
        if self.dropped_tail and self._keep is not None:
            with open(self.path, "r+b") as fh:
                fh.truncate(self._keep)
                os.fsync(fh.fileno())

    def record(self, visit: Visit) -> None:
        """Append `visit` durably (fsynced before this returns)."""
        self._log.append({"attempt": visit.attempt, "round": visit.round, "index": visit.index,
                          "arch_id": self.arch_ids[visit.index],
                          "samples_ms": list(visit.samples_ms)})

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> VisitJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
