"""A search's evaluations survive a kill: each one is journaled durably as it finishes, readers
recover journal rows the Parquet snapshot lacks, generations keep counting across a resume, and
one run is written by one process at a time."""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import search
import search.evaluations as evaluations
from nasbench_core.errors import RunError
from search.evaluations import (
    EvaluationLog,
    Evaluator,
    log_line,
    log_path,
    read_log,
    read_table,
    write_table,
)
from search.objectives import Objective
from search.problem import SearchProblem
from tests.test_cli import assert_one_line_error
from tests.test_search_core import SPACE, toy_objectives

ROOT = Path(__file__).resolve().parents[1]
META = {"objectives": ["top1"], "directions": {"top1": "max"}}


def journal_rows() -> list[dict]:
    """Rows as an Evaluator makes them, with every awkward cell: NaN, +-inf, numpy and Python
    ints and floats, integral floats, and nanosecond UTC timestamps."""
    archs = [SPACE.sample(np.random.default_rng(i)) for i in range(5)]
    return [{
        "arch_id": SPACE.arch_id(a), "arch": SPACE.canonical_json(a),
        "top1": [0.5, math.inf, -math.inf, math.nan, np.float64(0.25)][i],
        "params": [12345.0, math.nan, 7.0, np.int64(3), 1e6][i],
        "latency_ms": [math.nan, 1.5, 2.0, 0.0, 3.0][i],
        "source": "measured", "device": "cpu", "seed": np.int64(3), "generation": i // 2,
        "timestamp": pd.Timestamp("2024-05-01T12:00:00.123456789Z") + pd.Timedelta(seconds=i),
    } for i, a in enumerate(archs)]


def test_journal_rows_read_back_exactly_and_in_the_stored_dtypes(tmp_path):
    rows = journal_rows()
    frame = pd.DataFrame(rows)
    direct = tmp_path / "direct.parquet"
    write_table(direct, frame, META)
    expected, _ = read_table(direct)
    # The snapshot holds the first row; the journal all five (the first again: it predates the
    # snapshot's compaction). Readers get each arch_id once, typed as if written to Parquet.
    table = tmp_path / "evaluations.parquet"
    write_table(table, frame.head(1), META)
    with EvaluationLog(log_path(table)) as log:
        for row in rows:
            log.append(row)
    recovered, meta = read_table(table)
    pd.testing.assert_frame_equal(recovered, expected)
    assert meta == META and str(recovered["params"].dtype) == "Int64"
    assert recovered["timestamp"].iloc[0] == pd.Timestamp("2024-05-01T12:00:00.123456789Z")
    assert recovered["top1"].iloc[1:3].tolist() == [math.inf, -math.inf]
    for line in log_path(table).read_text().splitlines():  # strict JSON: no NaN/Infinity tokens
        json.loads(line, parse_constant=lambda token: pytest.fail(f"non-standard JSON {token}"))
    # From an empty snapshot (a search killed in its first batch) the dtypes are the same.
    write_table(table, frame.head(0), META)
    pd.testing.assert_frame_equal(read_table(table)[0], expected)


def test_a_torn_last_line_is_ignored_and_cut_off_before_the_next_append(tmp_path):
    rows = journal_rows()
    ids = [r["arch_id"] for r in rows]
    table = tmp_path / "evaluations.parquet"
    write_table(table, pd.DataFrame(rows).head(0), META)
    journal = log_path(table)
    with EvaluationLog(journal) as log:
        for row in rows[:3]:
            log.append(row)
    with open(journal, "ab") as fh:  # killed in the middle of writing row 3
        fh.write(log_line(rows[3])[:60])
    assert read_log(journal)["arch_id"].tolist() == ids[:3]
    assert read_table(table)[0]["arch_id"].tolist() == ids[:3]
    with EvaluationLog(journal) as log:  # the resumed writer
        log.append(rows[4])
    assert read_log(journal)["arch_id"].tolist() == [*ids[:3], ids[4]]
    assert [json.loads(line)["arch_id"] for line in journal.read_text().splitlines()] == [*ids[:3], ids[4]]
    # Only a last line without its newline is a torn write; a bad complete line is an error.
    journal.write_bytes(log_line(rows[0]) + b'{"arch_id": "x\n' + log_line(rows[1]))
    with pytest.raises(RunError, match="line 2 is not JSON"):
        read_table(table)


@pytest.mark.parametrize("name", [n for n in search.list_optimizers() if n != "agemoea"])
def test_every_evaluation_is_journaled_and_fsynced_before_the_next_starts(name, tmp_path, monkeypatch):
    journal = tmp_path / "evaluations.log.jsonl"
    synced = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        if journal.exists() and os.path.samestat(os.fstat(fd), journal.stat()):
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(evaluations.os, "fsync", counting_fsync)
    (top1, macs), _ = toy_objectives()
    seen = []

    def probe(arch):  # called once per evaluation, first of its metrics
        seen.append((journal.read_bytes().count(b"\n") if journal.exists() else 0, len(synced)))
        return top1(arch)

    objectives = [Objective("top1", probe, "max", "fraction"), macs]
    kwargs = ({"inner_generations": 2, "inner_pop_size": 10, "regressors": ["ridge"], "pop_size": 4}
              if name == "linas" else {})
    ev = Evaluator(SPACE, objectives, budget=12, log=EvaluationLog(journal))
    with ev.log:
        search.create_optimizer(name, **kwargs).run(SearchProblem(ev), seed=0, workdir=tmp_path)
    assert seen == [(k, k) for k in range(12)]  # the k rows before each are on disk, fsynced
    assert read_log(journal)["arch_id"].tolist() == ev.df["arch_id"].tolist()


@pytest.mark.parametrize("name", ["random", "nsga2"])
def test_generation_continues_after_a_resume(name):
    settings = {"batch_size": 4} if name == "random" else {"pop_size": 4}
    first = SearchProblem(Evaluator(SPACE, toy_objectives()[0], budget=8))
    search.create_optimizer(name, **settings).run(first, seed=0)
    before = first.evaluator.df["generation"].tolist()
    assert before[0] == 0 and max(before) >= 1
    second = SearchProblem(Evaluator(SPACE, toy_objectives()[0], table=first.evaluator.df, budget=8))
    assert second.generation == max(before) + 1
    search.create_optimizer(name, **settings).run(second, seed=1)
    generations = second.evaluator.df["generation"].tolist()
    assert generations[:8] == before and min(generations[8:]) > max(before)
    assert generations == sorted(generations)


def tiny_search(root: Path, name: str, budget: int) -> dict:
    """An untrained tiny mbv3 searched at random in batches of 4, ~0.3 s per evaluation (top1
    runs the net on a validation batch): slow enough to kill in the middle of a batch."""
    from tests.test_api import tiny_search as base

    cfg = base(root, name, ["top1", "params"])
    return {**cfg, "optimizer": {"name": "random", "settings": {"batch_size": 4}}, "budget": budget,
            "run": {"root": str(root), "name": name}}


KILLABLE = """
import json, sys
import nasbench
import search.evaluations as ev
row_of = ev.Evaluator._row
def announced(self, arch, aid, values, generation):  # a measurement is done, before its journal line
    row = row_of(self, arch, aid, values, generation)
    print("measured", aid, flush=True)
    return row
ev.Evaluator._row = announced
nasbench.search(json.loads(sys.argv[1]), quiet=True)
"""


def _lines(proc: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_a_search_sigkilled_mid_batch_resumes_losing_at_most_the_evaluation_in_flight(tmp_path):
    import nasbench

    cfg = tiny_search(tmp_path, "k", budget=12)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    lines, measured = _lines(proc), []
    try:
        while len(measured) < 6:  # the second batch of 4 is half done
            line = lines.get(timeout=180)
            assert line is not None, f"the search ended before it was killed (exit {proc.wait()})"
            measured.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := lines.get(timeout=30)) is not None:  # measured between the last read and the kill
        measured.append(line.split()[1])
    run_dir = tmp_path / "k"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    journaled = read_log(log_path(run_dir / "evaluations.parquet"))
    snapshot = pq.read_table(run_dir / "evaluations.parquet").num_rows
    assert snapshot == 4 < len(journaled)  # killed mid-batch: the Parquet lacks journaled rows
    assert journaled["arch_id"].tolist() == measured[:len(journaled)]
    assert len(measured) - len(journaled) <= 1  # at most the evaluation in flight is lost
    assert set(journaled["generation"]) == {0, 1}
    recovered = nasbench.load_run(run_dir).evaluations  # readers see the journal's rows too
    assert recovered["arch_id"].tolist() == journaled["arch_id"].tolist()

    resumed = nasbench.search(cfg, resume=True, quiet=True)
    final = resumed.evaluations
    assert len(final) == 12 and final["arch_id"].is_unique and resumed.status == "completed"
    kept = final.set_index("arch_id").loc[journaled["arch_id"]]
    for column in ["top1", "params", "generation", "timestamp"]:  # not re-measured: same values
        assert kept[column].tolist() == journaled[column].tolist(), column
    assert read_log(log_path(run_dir / "evaluations.parquet"))["arch_id"].tolist() \
        == final["arch_id"].tolist()  # each arch journaled once: nothing measured twice
    generations = final["generation"].tolist()
    assert generations == sorted(generations)  # no restart at 0
    assert min(generations[len(journaled):]) > max(journaled["generation"])


GATED = """
import sys, time
from pathlib import Path
import search.evaluations as ev
row_of = ev.Evaluator._row
gate = Path(sys.argv[1])
def gated(self, arch, aid, values, generation):  # holds the run until the test tried to resume it
    row = row_of(self, arch, aid, values, generation)
    while not gate.exists():
        time.sleep(0.05)
    return row
ev.Evaluator._row = gated
from nasbench.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_a_second_concurrent_resume_exits_2_naming_the_writer_and_no_row_is_lost(tmp_path, cli):
    import nasbench

    first = nasbench.search(tiny_search(tmp_path, "c", budget=4), quiet=True)
    before = first.evaluations
    gate = tmp_path / "gate"
    resume = ["search", "--resume", str(first.path), "--set", "budget=10", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = (tmp_path / "writer.err").open("w")
    writer = subprocess.Popen([sys.executable, "-c", GATED, str(gate), *resume], cwd=ROOT, env=env,
                              stderr=log, text=True)
    errors = (tmp_path / "writer.err").read_text
    try:
        deadline = time.time() + 180
        while time.time() < deadline and writer.poll() is None:  # until the writer holds the run
            try:
                if json.loads((first.path / ".lock.json").read_text())["pid"] == writer.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        assert writer.poll() is None, errors()
        second = cli(*resume)
        assert_one_line_error(second, f"nasbench: error: run {first.path} is in use by pid "
                                      f"{writer.pid} on host {socket.gethostname()}")
        gate.touch()
        assert writer.wait(timeout=180) == 0, errors()
    finally:
        gate.touch()
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
        log.close()
    final = nasbench.load_run(first.path)
    df = final.evaluations
    assert len(df) == 10 and df["arch_id"].is_unique
    assert df["arch_id"].head(4).tolist() == before["arch_id"].tolist()
    assert df["timestamp"].head(4).tolist() == before["timestamp"].tolist()
    assert read_log(log_path(first.path / "evaluations.parquet"))["arch_id"].tolist() == df["arch_id"].tolist()
    assert final.status == "completed" and final.manifest["evaluations"] == 10
    assert len(final.manifest["resumes"]) == 1  # the refused resume wrote nothing
