"""Run directories: manifest.json, config.yaml, metrics.csv, tables, checkpoints.

Every write is atomic (temp file + rename): a killed run leaves a manifest whose status is
`running` or `failed`, and no half-written file.

A run directory is locked while a process writes it (`start_run`): an OS file lock (flock, via
`filelock.FileLock`) on `RUN/.lock`, with the holder's pid and host in `RUN/.lock.json`. A second
writer is refused at once with a one-line `RunError`; the kernel drops the lock of a process that
dies, even by SIGKILL, so a killed run's lock is taken over by the next writer. Each run directory
has its own lock file, so runs nested in a run (quickstart's) never wait on their parent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from nasbench.config.sections import default_results_root
from nasbench.runs.facts import git_commit, package_versions
from nasbench.termination import Terminated, sigterm_raises
from nasbench_core.atomic import atomic_path, atomic_write_text
from nasbench_core.errors import RunError
from nasbench_core.readers import read_csv, read_json, read_parquet, read_parquet_schema

MANIFEST = "manifest.json"
LOCK = ".lock"
LOCK_INFO = ".lock.json"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


class Run:
    """A run directory. Create with `start_run`, open with `load_run`."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._metrics_rows: list[dict[str, Any]] | None = None
        self.lock: RunLock | None = None  # set by `start_run` while this process writes the run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, command={self.manifest.get('command')!r}, status={self.status!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def config(self) -> Any:
        """The config the run was started with, as its runner's config model (`TrainConfig`,
        `SearchConfig`, ...); the raw dict stays in `manifest["config"]`."""
        from nasbench.runners import config_model
        from nasbench.runners.config import stored_config

        return stored_config(self, config_model(self.manifest.get("command", "?")))

    @property
    def _config_dict(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def checkpoints(self) -> Path:
        folder = self.path / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- writing -----------------------------------------------------------------------
    def write_manifest(self) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2, default=_json_default))

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.write_manifest()

    def write_json(self, relpath: str, obj: Any) -> Path:
        target = self.path / relpath
        atomic_write_text(target, json.dumps(obj, indent=2, default=_json_default))
        return target

    def write_table(self, name: str, df: pd.DataFrame, metadata: dict[str, str] | None = None) -> Path:
        """Write `name.parquet`; `metadata` goes into the Parquet file's key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = self.path / f"{name}.parquet"
        table = pa.Table.from_pandas(df, preserve_index=False)
        if metadata:
            merged = dict(table.schema.metadata or {})
            merged.update({k.encode(): v.encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(merged)
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        return target

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.csv (the file is rewritten atomically, columns unioned)."""
        self.replace_metrics([*self._load_metrics_rows(), row])

    def replace_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv as exactly `rows` (e.g. the rows a resumed run's checkpoint holds)."""
        self._metrics_rows = [{k: _json_default(v) if hasattr(v, "item") else v for k, v in row.items()}
                              for row in rows]
        buffer = io.StringIO()
        if self._metrics_rows:
            pd.DataFrame(self._metrics_rows).to_csv(buffer, index=False)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def _load_metrics_rows(self) -> list[dict[str, Any]]:
        if self._metrics_rows is None:
            existing = self.metrics
            self._metrics_rows = existing.to_dict("records") if not existing.empty else []
        return self._metrics_rows

    # -- reading -----------------------------------------------------------------------
    def read_table(self, name: str) -> pd.DataFrame:
        target = self.path / f"{name}.parquet"
        return read_parquet(target, RunError).to_pandas() if target.exists() else pd.DataFrame()

    def table_metadata(self, name: str) -> dict[str, str]:
        target = self.path / f"{name}.parquet"
        if not target.exists():
            return {}
        meta = read_parquet_schema(target, RunError).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"pandas")}

    @property
    def evaluations(self) -> pd.DataFrame:
        """The search's evaluations in the stored dtypes, with `is_pareto` computed over the rows
        meeting the config's `constraints` (never read from the file)."""
        return self._search_table("evaluations")

    @property
    def pareto(self) -> pd.DataFrame:
        """The rows `pareto.parquet` holds, typed and with `is_pareto` recomputed like
        `.evaluations`."""
        return self._search_table("pareto")

    @property
    def archs(self) -> pd.DataFrame:
        """One column per search-space dimension, parsed from `arch`, indexed like `.evaluations`
        (so `run.archs.loc[run.evaluations.is_pareto]` gives the front's archs)."""
        evaluations = self.evaluations
        if "arch" not in evaluations.columns:
            return pd.DataFrame(index=evaluations.index)
        return pd.DataFrame.from_records([json.loads(a) for a in evaluations["arch"]],
                                         index=evaluations.index)

    @property
    def directions(self) -> dict[str, str]:
        """Objective column -> "min"/"max" from the evaluations table metadata ({} without one)."""
        from search.evaluations import objective_directions, read_metadata

        target = self.path / "evaluations.parquet"
        metadata = read_metadata(target) if target.exists() else {}
        return objective_directions(metadata, self._config_dict.get("objectives"))

    def feasible(self, df: pd.DataFrame) -> np.ndarray:
        """Which rows of `df` meet every constraint of the run's config (all, without any)."""
        from search.problem import feasible_mask, parse_constraint

        constraints = [parse_constraint(c) for c in self._config_dict.get("constraints") or ()]
        return feasible_mask(df, constraints)

    def _search_table(self, name: str) -> pd.DataFrame:
        from search.evaluations import objective_directions, read_table, with_pareto

        target = self.path / f"{name}.parquet"
        if not target.exists():
            return pd.DataFrame()
        df, metadata = read_table(target)
        directions = objective_directions(metadata, self._config_dict.get("objectives"))
        return with_pareto(df, directions, self.feasible(df)) if directions else df

    def plot(self, ax: Any = None) -> Any:
        """The run on a matplotlib Axes: a search's front (`search.plot_front`), or a train or
        prune run's validation-accuracy curve from metrics.csv."""
        from nasbench.runs.plots import plot_metrics

        directions = self.directions
        if directions:
            import search

            evaluations = self.evaluations
            return search.plot_front(evaluations, directions, ax,
                                     feasible=self.feasible(evaluations),
                                     title=f"{self.name}: {len(evaluations)} evaluations")
        metrics = self.metrics
        if not metrics.empty:
            return plot_metrics(metrics, ax, title=self.name)
        raise RunError(f"run {self.path} has nothing to plot: no evaluations.parquet or metrics.csv")

    @property
    def metrics(self) -> pd.DataFrame:
        target = self.path / "metrics.csv"
        return read_csv(target, RunError) if target.exists() else pd.DataFrame()

    def tables(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.parquet"))


def load_run(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """Open a run by directory path, or by name under `root` (default `$NASBENCH_RESULTS`, else
    ./results: where runs are written)."""
    candidate = Path(path)
    under_root = Path(default_results_root() if root is None else root) / candidate
    if not (candidate / MANIFEST).exists() and (under_root / MANIFEST).exists():
        candidate = under_root
    manifest_path = candidate / MANIFEST
    if not candidate.exists():
        raise RunError(f"run not found: {path} (no such directory)")
    if not manifest_path.exists():
        raise RunError(f"not a run directory: {candidate} has no {MANIFEST}")
    return Run(candidate, read_json(manifest_path, RunError, required=("command",)))


class RunLock:
    """The write lock of one run directory: `acquire` takes it or raises a one-line RunError
    naming the holder ("run X is in use by pid N on host H"); `release` gives it up."""

    def __init__(self, path: Path):
        from filelock import FileLock

        self.path = Path(path)
        self._lock = FileLock(self.path / LOCK, timeout=0, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> RunLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunError(f"run {self.path} is in use by {lock_holder(self.path)}") from None
        try:
            atomic_write_text(self.path / LOCK_INFO, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}))
        except BaseException:
            self._lock.release()
            raise
        return self

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_INFO).unlink()
        finally:
            self._lock.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_holder(path: Path, wait: float = 1.0) -> str:
    """"pid N on host H" from the lock's sidecar. The holder writes it just after taking the
    lock, so a missing sidecar, or a dead process's left behind by a SIGKILL, is re-read for up
    to `wait` seconds before settling for a vaguer answer."""
    import time

    deadline = time.monotonic() + wait
    info: dict[str, Any] = {}
    while True:
        try:
            info = json.loads((Path(path) / LOCK_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and host and (host != socket.gethostname() or _pid_alive(pid)):
            return f"pid {pid} on host {host}"
        if time.monotonic() >= deadline:
            return "another process (its pid and host are not recorded yet)"
        time.sleep(0.05)


_RESUME_HINTS = {"train": "", "search": "", "prune": " (a lottery run)", "latency": ""}
"""Commands with `--resume`, and which of their runs it continues."""


def _exists_message(path: Path, command: str) -> str:
    """Names `--resume` only for a command that has it: the rest get a new name to choose."""
    hint = _RESUME_HINTS.get(command)
    resume = "" if hint is None else f" or pass --resume {path} to continue it{hint}"
    return f"run directory {path} already exists: choose another run.name{resume}"


def _new_run_dir(root: Path, command: str, name: str | None, overwrite: bool) -> tuple[Path, RunLock]:
    """A new, empty, locked run directory; `overwrite` empties an existing one that no other
    process holds (the lock file stays: deleting a held lock's file would let a third process
    lock a fresh inode)."""
    if name is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{command}-{stamp}-{secrets.token_hex(2)}"
    if "/" in name or name in {"", ".", ".."}:
        raise RunError(f"run name {name!r} must be a plain directory name")
    path = root / name
    if root.exists() and not root.is_dir():
        raise RunError(f"run.root {root} is not a directory")
    if path.exists():
        if not overwrite:
            raise RunError(_exists_message(path, command))
        lock = RunLock(path).acquire()
        try:
            for child in path.iterdir():
                if child.name in (LOCK, LOCK_INFO):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        except BaseException:
            lock.release()
            raise
        return path, lock
    try:
        path.mkdir(parents=True)
    except FileExistsError:  # another process created it since the check
        raise RunError(_exists_message(path, command)) from None
    except OSError as exc:  # unwritable root, a file on the way, a read-only file system
        raise RunError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    return path, RunLock(path).acquire()


def _failure_reason(exc: BaseException) -> str:
    """The manifest's `error` of a failed run."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, Terminated):
        return "terminated"
    return f"{type(exc).__name__}: {exc}"


def _write_config_yaml(path: Path, config: dict[str, Any]) -> None:
    plain = json.loads(json.dumps(config, default=_json_default))
    atomic_write_text(path / "config.yaml", yaml.safe_dump(plain, sort_keys=False))


def _stale_temp_files(root: Path) -> list[Path]:
    """Temp files a SIGKILL left: ours (`.NAME.*.tmp`, between write and rename, see
    nasbench_core.atomic) and safetensors' own (`.tmpXXXXXX`, its Rust writer's temp file)."""
    ours = set(root.rglob(".*.tmp"))
    theirs = {p for p in root.rglob(".tmp*") if re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", p.name)}
    return sorted(p for p in ours | theirs if p.is_file())


@contextlib.contextmanager
def start_run(
    command: str,
    config: dict[str, Any],
    seed: int,
    root: str | os.PathLike | None = None,
    name: str | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    reopen_completed: bool = False,
    check_resume: Callable[[Run], None] | None = None,
) -> Iterator[Run]:
    """Create (or resume) a run under `root` (default `$NASBENCH_RESULTS`, else ./results); on
    exit mark it completed, or failed with the error. `reopen_completed` lets a job that can
    grow (a search given a larger budget) continue a completed run; resuming records `config`.

    The run directory is locked (`RunLock`) from before its first write until after its last:
    a run another process is writing is refused with a one-line RunError.

    `check_resume(run)` reads, under the lock and before anything is written, the files the
    resume will read (checkpoints, tables, state): a damaged one is refused in one line and
    the run is left byte for byte as it was, not reopened and marked failed."""
    if resume is not None:
        run = load_run(resume)
        if run.manifest.get("command") != command:
            raise RunError(f"cannot resume {run.path} with `{command}`: it is a `{run.manifest.get('command')}` run")
        lock = RunLock(run.path).acquire()
    else:
        path, lock = _new_run_dir(Path(default_results_root() if root is None else root), command,
                                  name, overwrite)
    try:
        if resume is not None:
            run = load_run(run.path)  # as the previous holder left it, now that it is ours
            if run.status == "completed" and not reopen_completed:
                raise RunError(f"run {run.path} already completed; nothing to resume")
            if check_resume is not None:
                check_resume(run)
            for stale in _stale_temp_files(run.path):
                stale.unlink()
            run.manifest.setdefault("resumes", []).append(_now())
            run.manifest.update(status="running", ended=None, error=None, config=config)
            _write_config_yaml(run.path, config)
        else:
            run = Run(path, {
                "command": command,
                "config": config,
                "seed": seed,
                "status": "running",
                "started": _now(),
                "ended": None,
                "host": socket.gethostname(),
                "versions": package_versions(),
                "git_commit": git_commit(),
            })
            _write_config_yaml(path, config)
        run.lock = lock
        run.write_manifest()
        try:
            with sigterm_raises():
                yield run
        except BaseException as exc:
            reason = _failure_reason(exc)
            run.update_manifest(status="failed", ended=_now(), error=reason)
            raise
        run.update_manifest(status="completed", ended=_now())
    finally:
        lock.release()
