"""The evaluations table: one row per evaluated arch, the source of truth of a search.

Columns: `arch_id`, `arch` (canonical JSON), one column per metric (units in the name), `source`,
`device`, `seed`, `generation`, `timestamp`. Unmeasured values are NaN, never 0. The Parquet file
carries metadata (objectives, metric directions and units, device, space fingerprint) so a reader
can compute `is_pareto` itself; it is never stored as truth. `Evaluator` wraps the objectives and
never re-evaluates an arch_id the table already has, which is what makes a search resumable.

Stored dtypes (`table_dtypes`, applied on every write and read): `timestamp` is
datetime64[ns, UTC], the counts `params`/`macs` are int64 (nullable Int64 where one is missing).

Durability: an `Evaluator` given an `EvaluationLog` appends every finished evaluation to a
JSON-lines journal next to the table (`evaluations.parquet` -> `evaluations.log.jsonl`), with
write + flush + fsync, before it starts the next one. The Parquet file is a snapshot rewritten
atomically from the evaluator's rows at each batch end; `read_table` adds the journal rows the
snapshot lacks (by arch_id), so a search killed mid-batch loses at most the evaluation in flight,
and every reader (resume, `Run.evaluations`, `nasbench results`, export) sees the recovered rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from nasbench_core.atomic import atomic_path, fsync_path
from nasbench_core.errors import RunError, UserError
from nasbench_core.readers import read_parquet, read_parquet_schema
from search.objectives import Objective
from search.pareto import pareto_mask

BASE_COLUMNS = ["arch_id", "arch"]
COUNT_COLUMNS = ("params", "macs")
METADATA_KEY = b"nasbench.evaluations"


def empty_table(metrics: Sequence[str]) -> pd.DataFrame:
    """The columns producers fill: metrics as float64 so NaN can mark a failed measurement, and
    `timestamp` as epoch seconds (`time.time()`); `table_dtypes` gives the stored dtypes."""
    cols = {c: pd.Series(dtype="string") for c in BASE_COLUMNS}
    cols.update({m: pd.Series(dtype="float64") for m in metrics})
    cols.update({
        "source": pd.Series(dtype="string"),
        "device": pd.Series(dtype="string"),
        "seed": pd.Series(dtype="int64"),
        "generation": pd.Series(dtype="int64"),
        "timestamp": pd.Series(dtype="float64"),
    })
    return pd.DataFrame(cols)


def _utc_timestamps(values: pd.Series) -> pd.Series:
    """UTC datetimes from what older tables hold: epoch seconds (float), ISO strings, or naive
    or zoned datetimes."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    elif pd.api.types.is_numeric_dtype(values):
        stamps = pd.to_datetime(values, unit="s", utc=True)
    else:
        stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    return stamps.dt.as_unit("ns")


def _counts(values: pd.Series) -> pd.Series:
    """int64, or nullable Int64 when a count is missing (never 0 for unmeasured); a column with
    fractional values (a predicted count, say) stays float rather than being truncated."""
    numbers = pd.to_numeric(values).astype("float64")
    finite = numbers.dropna().to_numpy()
    if not np.array_equal(finite, np.round(finite)):
        return numbers
    return numbers.astype("Int64" if numbers.isna().any() else "int64")


def table_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` in the stored dtypes: the one place tables are normalised, so files
    written by older versions (string or float timestamps, float counts) read the same."""
    out = df.copy()
    if "timestamp" in out.columns:
        out["timestamp"] = _utc_timestamps(out["timestamp"])
    for column in COUNT_COLUMNS:
        if column in out.columns:
            out[column] = _counts(out[column])
    return out


ARCH_IDS = "canonical"
"""How a table's arch_ids were made; tables from before canonical archs lack it."""


def table_metadata(objectives: Sequence[Objective], device: str, space_fingerprint: str,
                   extra: Sequence[Objective] = ()) -> dict:
    """`objectives` are what the front is over; `extra` metrics (measured for constraints only)
    get directions and units too, so a resumed search can check it measures the same things."""
    metrics = [*objectives, *extra]
    return {
        "objectives": [o.name for o in objectives],
        "directions": {o.name: o.direction for o in metrics},
        "units": {o.name: o.unit for o in metrics},
        "sources": {o.name: o.source for o in metrics},
        "device": device,
        "space_fingerprint": space_fingerprint,
        "arch_ids": ARCH_IDS,
    }


def objective_directions(metadata: Mapping, objectives: Sequence[str] | None = None) -> dict[str, str]:
    """Directions of the objectives in `metadata` (metrics measured only for constraints are not
    objectives). Files without an `objectives` entry fall back to `objectives` (e.g. the run's
    config), else to every column with a direction."""
    directions = metadata.get("directions", {})
    names = metadata.get("objectives") or objectives or list(directions)
    return {name: directions[name] for name in names if name in directions}


def write_table(path: str | Path, df: pd.DataFrame, metadata: dict) -> None:
    """Atomic Parquet write in the stored dtypes, with `metadata` as JSON in the schema metadata;
    `is_pareto` is dropped: readers compute it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stored = table_dtypes(df.drop(columns=["is_pareto"], errors="ignore"))
    table = pa.Table.from_pandas(stored, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(metadata).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


LOG_SUFFIX = ".log.jsonl"


def log_path(table_path: str | Path) -> Path:
    """The journal of a table: `evaluations.parquet` -> `evaluations.log.jsonl`."""
    table_path = Path(table_path)
    return table_path.with_name(table_path.stem + LOG_SUFFIX)


def _json_cell(value) -> str:
    """One cell as strict JSON: NaN is `null`, +-inf are `1e999`/`-1e999` (which parse back as
    +-inf), timestamps are ISO 8601 with offset and nanoseconds (exact), numpy scalars plain."""
    if isinstance(value, pd.Timestamp):
        value = value.isoformat()
    elif hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "null" if math.isnan(value) else ("1e999" if value > 0 else "-1e999")
    return json.dumps(value)


def log_line(row: Mapping) -> bytes:
    """A row as one journal line (newline included)."""
    cells = ",".join(f"{json.dumps(str(k))}:{_json_cell(v)}" for k, v in row.items())
    return ("{" + cells + "}\n").encode()


class EvaluationLog:
    """An append-only journal of evaluated rows, one strict-JSON object per line.

    `append` writes the line, flushes and fsyncs before returning. A process killed mid-write
    leaves a last line without its newline: `read_log` ignores it, and the next writer cuts it
    off before its first append, so it never glues onto a new row. Only the process holding the
    run's lock writes. The journal is never truncated otherwise: it is small (one line per true
    evaluation) and readers take each arch_id once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None

    def append(self, row: Mapping) -> None:
        if self._fh is None:
            self._open()
        self._fh.write(log_line(row))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _open(self) -> None:
        created = not self.path.exists()
        fh = open(self.path, "ab")  # noqa: SIM115 - stays open across appends; close() closes it
        complete = _complete_length(self.path)
        if fh.tell() != complete:  # a torn last line from a killed writer
            fh.truncate(complete)
            os.fsync(fh.fileno())
        if created:  # make the new directory entry durable too
            fsync_path(self.path.parent)
        self._fh = fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EvaluationLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _complete_length(path: Path) -> int:
    """Bytes up to and including the last newline: what survives of a torn journal."""
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


def read_log(path: str | Path) -> pd.DataFrame:
    """The journal's rows, each arch_id once (its first line; an empty frame without a
    journal); a torn last line is ignored. `timestamp` comes back as datetime64[ns, UTC], numbers
    as written (`null` is NaN); `merge_log` casts to a table's dtypes."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame()
    data = path.read_bytes()
    records = []
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}: line {number} is not JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise RunError(f"{path}: line {number} is not UTF-8 text (corrupted?)") from None
        if not isinstance(record, dict):
            raise RunError(f"{path}: line {number} is not a JSON object (edited by hand?)")
        records.append(record)
    df = pd.DataFrame.from_records(records)
    if "arch_id" in df.columns:
        df = df.drop_duplicates("arch_id", ignore_index=True)
    if "timestamp" in df.columns:
        df["timestamp"] = _utc_timestamps(df["timestamp"])
    return df


def merge_log(df: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """`df` plus the `log` rows whose arch_id it lacks, in `df`'s dtypes (`table_dtypes`)."""
    if log.empty:
        return df
    missing = log[~log["arch_id"].isin(df["arch_id"])] if "arch_id" in df.columns else log
    if missing.empty:
        return df
    missing = missing.copy()
    for column in missing.columns:  # `null` -> NaN in the table's numeric columns
        if column in df.columns and pd.api.types.is_numeric_dtype(df[column]) \
                and not pd.api.types.is_bool_dtype(df[column]):
            missing[column] = pd.to_numeric(missing[column])
    parts = [part for part in (df, missing) if len(part)]
    merged = pd.concat(parts, ignore_index=True) if len(parts) > 1 else missing.reset_index(drop=True)
    columns = [*df.columns, *(c for c in missing.columns if c not in df.columns)]
    return table_dtypes(merged.reindex(columns=columns))


def _nasbench_metadata(schema) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_metadata(path: str | Path) -> dict:
    """The nasbench metadata of a table ({} if it has none), without reading its rows."""
    return _nasbench_metadata(read_parquet_schema(path, RunError))


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The table in the stored dtypes and its nasbench metadata ({} if the file has none).

    A stored `is_pareto` (older files) is dropped, not trusted; `df.attrs["units"]` carries the
    metadata's units so plots can label axes. Rows of the table's journal (`log_path`) that the
    file lacks, written after its last compaction by a search that was then killed, are added.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"evaluations table {path} does not exist")
    table = read_parquet(path, RunError)
    metadata = _nasbench_metadata(table.schema)
    df = table_dtypes(table.to_pandas().drop(columns=["is_pareto"], errors="ignore"))
    df = merge_log(df, read_log(log_path(path)))
    df.attrs["units"] = dict(metadata.get("units", {}))
    return df, metadata


def with_pareto(df: pd.DataFrame, directions: Mapping[str, str],
                feasible: np.ndarray | None = None) -> pd.DataFrame:
    """A copy of `df` with a computed boolean `is_pareto` column: the front of the `feasible`
    rows (all rows by default), so a row violating a constraint is never on it."""
    ok = np.ones(len(df), dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    mask = np.zeros(len(df), dtype=bool)
    if ok.any():
        mask[ok] = pareto_mask(df[ok], directions)
    out = df.copy()
    out["is_pareto"] = mask
    return out


class Backend(Protocol):
    """Measures archs for an `Evaluator`: yields `(index into archs, {metric: value})` as each
    finishes, in any order."""

    def measure(self, archs: Sequence[dict]) -> Iterator[tuple[int, Mapping[str, float]]]: ...


def details_of(name: str, metric: Callable, arch: dict) -> dict[str, float]:
    """What a measurement found besides its value (a latency's `_iqr`, `_retimed`, `_noisy`),
    under columns named after the metric (`latency_ms@cpu_iqr` for `latency_ms@cpu`)."""
    get = getattr(getattr(metric, "fn", metric), "details", None)
    if get is None:
        return {}
    base = name.partition("@")[0]
    return {name + key[len(base):] if key.startswith(base) else f"{name}_{key}": float(value)
            for key, value in get(arch).items()}


class SerialBackend:
    """Every metric of each arch in turn, in this process. A metric that can time a batch
    together (`measure_many`: interleaved latency rounds) gets the whole batch first."""

    def __init__(self, metrics: Sequence[Objective]):
        self.metrics = list(metrics)

    def measure(self, archs: Sequence[dict]) -> Iterator[tuple[int, dict[str, float]]]:
        for m in self.metrics:
            batch = getattr(m.fn, "measure_many", None)
            if batch is not None and len(archs) > 1:
                batch(archs)
        for index, arch in enumerate(archs):
            values: dict[str, float] = {}
            for m in self.metrics:
                values[m.name] = m(arch)
                values.update(details_of(m.name, m, arch))
            yield index, values


class BudgetExhausted(Exception):
    """Raised inside an optimizer when the true-evaluation budget is spent."""


class Evaluator:
    """Evaluates archs on every metric, appending rows to the table; cached by arch_id.

    `objectives` are what the optimizer minimises/maximises; `extra` metrics are measured only
    so constraints can use them. `budget` caps the number of new (true) evaluations.
    `log` (an `EvaluationLog`) gets every new row, durably, as soon as it is measured;
    `on_update(df)` runs after every batch (the CLI uses it to compact the table to Parquet).
    `next_generation` is one past the largest `generation` of `table` (0 without one), where a
    resumed search continues counting. `backend` measures a batch's new archs (`SerialBackend`,
    one after another in process, by default; `nasbench.distributed.evaluate.RayBackend`
    concurrently on Ray workers): rows are journaled as they finish and enter the table in the
    batch's order, so the table does not depend on how many workers measured it.
    """

    def __init__(
        self,
        space,
        objectives: Sequence[Objective],
        *,
        extra: Sequence[Objective] = (),
        table: pd.DataFrame | None = None,
        device: str = "cpu",
        seed: int = 0,
        budget: int | None = None,
        on_update: Callable[[pd.DataFrame], None] | None = None,
        log: EvaluationLog | None = None,
        provenance: Mapping[str, str] | None = None,
        backend: Backend | None = None,
    ):
        self.space = space
        self.provenance = dict(provenance or {})
        self.objectives = list(objectives)
        self.metrics = self.objectives + [e for e in extra if e.name not in self.names]
        self.device = device
        self.seed = seed
        self.budget = budget
        self.on_update = on_update
        self.log = log
        self.backend = backend or SerialBackend(self.metrics)
        self._metric_names = {m.name for m in self.metrics}
        self.n_new = 0
        base = table_dtypes(empty_table([m.name for m in self.metrics]) if table is None else table)
        for m in self.metrics:  # floats while searching: NaN marks an unmeasured value
            base[m.name] = base[m.name].astype("float64") if m.name in base.columns else np.nan
        self._columns = list(base.columns)
        self._dtypes = base.dtypes.to_dict()
        self._records: list[dict] = base.to_dict("records")
        self._rows: dict[str, int] = {r["arch_id"]: i for i, r in enumerate(self._records)}
        self._df: pd.DataFrame | None = base
        generations = pd.to_numeric(base["generation"], errors="coerce").dropna() \
            if "generation" in base.columns else pd.Series(dtype=float)
        self.next_generation = int(generations.max()) + 1 if len(generations) else 0

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> dict[str, str]:
        return {o.name: o.direction for o in self.objectives}

    @property
    def remaining(self) -> float:
        return np.inf if self.budget is None else self.budget - self.n_new

    def metadata(self) -> dict:
        extra = self.metrics[len(self.objectives):]
        return {**table_metadata(self.objectives, self.device, self.space.fingerprint(), extra),
                **self.provenance}

    def has(self, arch: dict) -> bool:
        return self.space.arch_id(arch) in self._rows

    @property
    def df(self) -> pd.DataFrame:
        """The table so far (built lazily: appending rows stays O(1) per evaluation)."""
        if self._df is None:
            self._df = pd.DataFrame(self._records, columns=self._columns).astype(self._dtypes)
        return self._df

    def evaluate(self, archs: Sequence[dict], generation: int = 0) -> pd.DataFrame:
        """Rows (one per arch, input order) of all metrics; evaluates only unseen subnets
        (archs are canonicalised, so encodings of one subnet share its row).

        Stops with `BudgetExhausted` before the first new evaluation past the budget; rows
        evaluated before that are already in the table.
        """
        archs = [self.space.canonical(a) for a in archs]  # one subnet, one row: never twice
        ids = [self.space.arch_id(a) for a in archs]
        new = list({aid: arch for arch, aid in zip(archs, ids, strict=True)
                    if aid not in self._rows}.items())
        over_budget = len(new) > self.remaining
        if over_budget:
            new = new[: max(0, int(self.remaining))]
        finished: dict[int, dict] = {}
        try:
            for index, values in self.backend.measure([arch for _, arch in new]):
                aid, arch = new[index]
                row = self._row(arch, aid, values, generation)
                if self.log is not None:  # durable as soon as it is measured
                    self.log.append(row)
                finished[index] = row
                self.n_new += 1
        finally:
            self._append([finished[i] for i in sorted(finished)])
        if over_budget:
            raise BudgetExhausted
        names = [m.name for m in self.metrics]
        rows = [[self._records[self._rows[aid]][n] for n in names] for aid in ids]
        return pd.DataFrame(rows, columns=names, dtype=float)

    def _row(self, arch: dict, aid: str, values: Mapping[str, float], generation: int) -> dict:
        sources = {m.source for m in self.metrics}
        return {
            "arch_id": aid,
            "arch": self.space.canonical_json(arch),
            **{m.name: values[m.name] for m in self.metrics},
            **{k: v for k, v in values.items() if k not in self._metric_names},
            "source": sources.pop() if len(sources) == 1 else "mixed",
            "device": self.device,
            "seed": self.seed,
            "generation": generation,
            "timestamp": pd.Timestamp.now(tz="UTC"),
        }

    def _append(self, rows: list[dict]) -> None:
        if not rows:
            return
        for key in rows[0]:  # measurement details (a latency's IQR) become columns too
            if key not in self._dtypes:
                self._columns.append(key)
                self._dtypes[key] = np.dtype("float64")
        for r in rows:
            self._rows[r["arch_id"]] = len(self._records)
            self._records.append(r)
        self._df = None
        if self.on_update is not None:
            self.on_update(self.df)

    def pareto(self) -> pd.DataFrame:
        """Rows on the front of the objectives, with `is_pareto` computed."""
        df = with_pareto(self.df, self.directions)
        return df[df["is_pareto"]].reset_index(drop=True)


def check_compatible(metadata: dict, *, space_fingerprint: str, device: str,
                     metrics: Sequence[str] | None = None, calibration: str | None = None) -> None:
    """A resumed table must come from the same space and device, measure the same metrics
    (rows missing a new metric would otherwise count as evaluated with NaN) and, when given,
    measure accuracy on the same fixed `calibration` subset (its id)."""
    fp = metadata.get("space_fingerprint")
    if fp is not None and fp != space_fingerprint:
        raise UserError(
            f"evaluations table is from search space {fp}; this supernet's space is "
            f"{space_fingerprint}"
        )
    if metadata and metadata.get("arch_ids") != ARCH_IDS:
        raise UserError("evaluations table predates canonical arch ids (one subnet could have "
                        "several rows); start a new search run instead of resuming this one")
    dev = metadata.get("device")
    if dev is not None and dev != device:
        raise UserError(f"evaluations table was measured on device {dev!r}, not {device!r}")
    stored = metadata.get("calibration")
    if metadata and calibration is not None and stored != calibration:
        raise UserError(f"evaluations table was measured on calibration subset {stored!r}, not "
                        f"{calibration!r}; start a new search run instead of resuming this one")
    have = list(metadata.get("directions", {}))
    if metrics is not None and have and sorted(have) != sorted(metrics):
        raise UserError(f"evaluations table measures {have}; this search measures {list(metrics)}")
