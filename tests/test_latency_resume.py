"""`latency measure --resume`: a killed measurement keeps every visit it journaled and times
only the rest, in the order the uninterrupted run would have.

Fake runners (scripted milliseconds) check the resumable timing loop against the uninterrupted
one visit for visit; a real measurement interrupted in-process after its k-th journaled visit
is resumed and its table checked against an uninterrupted run's rows and against the journal
itself (every median recomputed from the journaled samples). The SIGKILL version is in
tests/test_kill_suite.py.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nasbench
from nasbench_core.errors import RunError
from search.latency.journal import VISITS, VisitJournal
from search.latency.measure import LatencyResult, LatencySettings, Visit, round_order, time_robust


class Killed(BaseException):
    """Stands in for a SIGKILL right after a durable write (not an Exception: nothing catches it)."""


# ---- the timing loop, with fake runners -----------------------------------------------------

S = LatencySettings(threads=1, warmup=3, repeats=6, rounds=3, max_rel_iqr=0.1, max_retimes=2)
"""3 visits of 2 timed calls per runner and attempt; the odd runners stay noisy, so both
re-timings run: 5 * 3 + 2 * 3 * 2 = 27 visits."""
N = 5


def fake_runners(calls: list[int]) -> list:
    """Runner i takes i+1 ms, the odd ones alternating with i+3 ms (noisy whatever the phase);
    each call appends i to `calls`."""
    def runner(i: int):
        values = itertools.cycle([1.0 + i, 3.0 + i] if i % 2 else [1.0 + i])

        def run() -> float:
            calls.append(i)
            return next(values)
        return run

    return [runner(i) for i in range(N)]


def timed(done=None, kill_after: int | None = None) -> tuple[list[Visit], list[LatencyResult] | None, list[int]]:
    """The visits timed now (in order), the results (None when killed) and the calls made."""
    visits: list[Visit] = []
    calls: list[int] = []

    def on_visit(visit: Visit) -> None:
        visits.append(visit)
        if kill_after is not None and len(visits) == kill_after:
            raise Killed

    try:
        results = time_robust(fake_runners(calls), S, seed=7, done=done, on_visit=on_visit)
    except Killed:
        results = None
    return visits, results, calls


def kept_attempt(visits: list[Visit], index: int) -> LatencyResult:
    """The oracle of `time_robust`'s choice: per attempt the samples of runner `index` in round
    order, and the first attempt with the smallest IQR/median."""
    attempts = sorted({v.attempt for v in visits if v.index == index})
    results = [LatencyResult.from_samples([t for v in sorted(visits, key=lambda v: v.round)
                                           if v.index == index and v.attempt == a
                                           for t in v.samples_ms]) for a in attempts]
    return min(results, key=lambda r: r.rel_iqr)


FULL, FULL_RESULTS, _ = timed()


def test_the_uninterrupted_loop_visits_every_round_of_every_attempt_once():
    keys = [v.key for v in FULL]
    assert len(keys) == len(set(keys)) == N * 3 + 2 * 3 * 2
    assert [r.retimed for r in FULL_RESULTS] == [0, 2, 0, 2, 0]
    assert not any(v.replayed for v in FULL)


@pytest.mark.parametrize("k", [1, 4, 14, 15, 16, 21, 26])
def test_a_resumed_loop_times_exactly_the_unjournaled_visits_in_the_uninterrupted_order(k):
    journaled, killed, _ = timed(kill_after=k)
    assert killed is None
    assert [v.key for v in journaled] == [v.key for v in FULL[:k]]
    done = {v.key: v.samples_ms for v in journaled}
    resumed, results, _ = timed(done=done)
    assert [v.key for v in resumed] == [v.key for v in FULL[k:]]  # nothing journaled re-timed
    assert not any(v.replayed for v in resumed)  # on_visit sees only what is timed now
    everything = journaled + resumed
    for i, result in enumerate(results):
        assert len(result.samples_ms) == 6  # as many samples as the uninterrupted run
        assert (result.retimed, result.noisy) == (FULL_RESULTS[i].retimed, FULL_RESULTS[i].noisy)
        oracle = kept_attempt(everything, i)  # the journaled samples are the ones used
        assert result.samples_ms == oracle.samples_ms
        assert (result.median_ms, result.iqr_ms) == (oracle.median_ms, oracle.iqr_ms)


def test_a_runners_first_visit_in_the_resuming_process_gets_the_full_warmup():
    """Killed once the first attempt is done: the resume visits only the noisy runners, and
    the first of their visits warms up fully (3 calls), the later ones with 2, as a fresh run."""
    journaled, _, _ = timed(kill_after=15)
    _, _, calls = timed(done={v.key: v.samples_ms for v in journaled})
    per_visit = 2
    first, later = S.warmup + per_visit, 5 * (2 + per_visit)
    assert {i: calls.count(i) for i in range(N)} == {0: 0, 1: first + later, 2: 0,
                                                    3: first + later, 4: 0}


def test_round_orders_are_seeded_round_by_round():
    assert round_order(6, 3, 0, 0) == list(range(6))
    orders = {(a, r): round_order(6, 3, a, r) for a in range(3) for r in range(4)}
    assert all(sorted(o) == list(range(6)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 6  # shuffled differently round by round
    again = {key: round_order(6, 3, *key) for key in reversed(list(orders))}  # any call order
    assert again == orders
    assert round_order(6, 4, 0, 1) != round_order(6, 3, 0, 1)


# ---- the journal ----------------------------------------------------------------------------

IDS = ["a" * 12, "b" * 12]
JS = LatencySettings(threads=1, repeats=4, rounds=2, max_retimes=1)


def journal_with(path: Path, visits: list[Visit]) -> Path:
    with VisitJournal(path, IDS) as journal:
        for visit in visits:
            journal.record(visit)
    return path


VISITS_4 = [Visit(0, 0, 0, (0.1 + 0.2, 1 / 3)), Visit(0, 0, 1, (2.0, 2.5)),
            Visit(0, 1, 1, (1e-9, 7.0)), Visit(1, 0, 0, (3.0, 3.0))]


def test_the_journal_gives_back_every_visit_exactly(tmp_path):
    path = journal_with(tmp_path / VISITS, VISITS_4)
    assert VisitJournal(path, IDS).load(JS) == {v.key: v.samples_ms for v in VISITS_4}


@pytest.mark.parametrize("tail", [b'{"attempt":0,"round":1,"in', b"\x00\x00\x00\x00\n",
                                  b'{"attempt":0,"round":1,"index":0}garbage\n'])
def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path, tail):
    path = journal_with(tmp_path / VISITS, VISITS_4[:3])
    good = path.read_bytes()
    path.write_bytes(good + tail)
    journal = VisitJournal(path, IDS)
    assert journal.load(JS) == {v.key: v.samples_ms for v in VISITS_4[:3]}
    assert journal.dropped_tail and path.read_bytes() == good + tail  # load only reads
    journal.cut_torn_tail()
    assert path.read_bytes() == good
    journal.record(VISITS_4[3])
    journal.close()
    assert VisitJournal(path, IDS).load(JS) == {v.key: v.samples_ms for v in VISITS_4}


def test_a_damaged_middle_line_is_refused_in_one_line_naming_the_file(tmp_path):
    path = journal_with(tmp_path / VISITS, VISITS_4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:20] + b"\n" + b"".join(lines[2:]))
    before = path.read_bytes()
    with pytest.raises(RunError, match=rf"{VISITS}: line 2 is damaged") as info:
        VisitJournal(path, IDS).load(JS)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("record, why", [
    ({"attempt": 0, "round": 0, "index": 0, "arch_id": "c" * 12, "samples_ms": [1.0, 1.0]},
     "is not subnet 0"),
    ({"attempt": 0, "round": 0, "index": 2, "arch_id": "a" * 12, "samples_ms": [1.0, 1.0]},
     "index 2"),
    ({"attempt": 2, "round": 0, "index": 0, "arch_id": "a" * 12, "samples_ms": [1.0, 1.0]},
     "attempt 2"),
    ({"attempt": 0, "round": 2, "index": 0, "arch_id": "a" * 12, "samples_ms": [1.0, 1.0]},
     "round 2"),
    ({"attempt": 0, "round": 0, "index": 0, "arch_id": "a" * 12, "samples_ms": [1.0]},
     "list of 2 timings"),
    ({"attempt": True, "round": 0, "index": 0, "arch_id": "a" * 12, "samples_ms": [1.0, 1.0]},
     "attempt True"),
    ([1, 2], "expected an object"),
])
def test_a_wellformed_line_of_another_measurement_is_refused_even_last(tmp_path, record, why):
    path = journal_with(tmp_path / VISITS, VISITS_4[:1])
    path.write_bytes(path.read_bytes() + json.dumps(record).encode() + b"\n")
    with pytest.raises(RunError, match="line 2 is not a visit of this measurement") as info:
        VisitJournal(path, IDS).load(JS)
    assert why in str(info.value)


# ---- the runner, interrupted in-process -----------------------------------------------------

LATENCY = {"n": 4, "warmup": 0, "repeats": 4, "rounds": 2, "threads": 1, "pool_factor": 1,
           "max_retimes": 1}


def config(root: Path, name: str, **latency) -> dict:
    return {"run": {"root": str(root), "name": name}, "latency": {**LATENCY, **latency}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("latency_reference")
    return nasbench.measure_latency(config(root, "ref"), quiet=True).read_table("latency")


def interrupted(root: Path, k: int, **latency) -> Path:
    """A measurement stopped right after its k-th journaled visit."""
    record = VisitJournal.record
    seen = []

    def record_then_die(self, visit):
        record(self, visit)
        seen.append(visit)
        if len(seen) == k:
            raise Killed

    VisitJournal.record = record_then_die
    try:
        with pytest.raises(Killed):
            nasbench.measure_latency(config(root, "killed", **latency), quiet=True)
    finally:
        VisitJournal.record = record
    return root / "killed"


@pytest.fixture(scope="module")
def killed_template(tmp_path_factory) -> Path:
    return interrupted(tmp_path_factory.mktemp("latency_killed"), 5)


@pytest.fixture
def killed(killed_template, tmp_path) -> Path:
    return Path(shutil.copytree(killed_template, tmp_path / "killed"))


def journal_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / VISITS).read_bytes().splitlines()]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*")
            if p.is_file() and not p.name.startswith(".lock")}


def test_an_interrupted_measurement_resumes_to_the_uninterrupted_table(killed, reference):
    before = (killed / VISITS).read_bytes()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "failed"
    assert not (killed / "latency.parquet").exists() and before.count(b"\n") == 5
    run = nasbench.measure_latency(resume=killed, quiet=True)
    assert run.status == "completed" and run.manifest["latency_visits_resumed"] == 5
    table = run.read_table("latency")
    assert list(table.columns) == list(reference.columns)
    for column in ["arch_id", "arch", "macs", "params", "device", "backend", "batch", "threads"]:
        assert table[column].tolist() == reference[column].tolist(), column  # row for row
    after = (killed / VISITS).read_bytes()
    assert after.startswith(before)  # every visit journaled before the kill is still there
    records = journal_records(killed)
    keys = [(r["attempt"], r["round"], r["index"]) for r in records]
    assert len(keys) == len(set(keys))  # ... and none was timed again
    recorded = json.loads((killed / "latency_archs.json").read_text())["archs"]
    assert recorded == table["arch"].tolist()
    for i, row in table.iterrows():  # the table is the journal's samples, pre-kill ones included
        visits = [Visit(r["attempt"], r["round"], r["index"], tuple(r["samples_ms"]))
                  for r in records if r["index"] == i]
        assert sorted({v.attempt for v in visits}) == list(range(row["latency_ms_retimed"] + 1))
        for attempt in range(row["latency_ms_retimed"] + 1):  # 2 rounds x 2 samples each
            assert sum(len(v.samples_ms) for v in visits if v.attempt == attempt) == 4
        oracle = kept_attempt(visits, i)
        assert (row["latency_ms"], row["latency_ms_iqr"]) == (oracle.median_ms, oracle.iqr_ms)


def test_a_changed_setting_is_refused_and_nothing_changes(killed, cli):
    before = snapshot(killed)
    result = cli("latency", "measure", "--resume", str(killed), "--set", "latency.repeats=8")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "latency.repeats was 4, now 8; a resume keeps the run's settings" in result.err
    assert snapshot(killed) == before


def test_a_changed_resolved_thread_count_is_refused(tmp_path):
    """`threads` unset means the machine's count: a resume where it resolves differently would
    time the rest with other threads, so it is refused like a changed config."""
    run = interrupted(tmp_path, 3, threads=None)
    before = snapshot(run)
    previous = torch.get_num_threads()
    torch.set_num_threads(previous + 1)
    try:
        with pytest.raises(RunError, match=f"settings.threads was {previous}, now {previous + 1}"):
            nasbench.measure_latency(resume=run, quiet=True)
    finally:
        torch.set_num_threads(previous)
    assert snapshot(run) == before


def test_a_completed_run_is_refused_and_a_torn_tail_resumes(killed, cli):
    with (killed / VISITS).open("ab") as fh:
        fh.write(b'{"attempt":0,"round":1,"index":2,"arch_id":"')  # the visit in flight
    result = cli("latency", "measure", "--resume", str(killed))
    assert result.code == 0, result.err
    assert "dropped its torn last line" in result.out
    assert len(journal_records(killed)) > 5  # every line parses: the torn one was cut
    before = snapshot(killed)
    result = cli("latency", "measure", "--resume", str(killed))
    assert result.code == 2 and "already completed; nothing to resume" in result.err
    assert snapshot(killed) == before


def test_a_damaged_journal_middle_is_refused_naming_the_file(killed, cli):
    lines = (killed / VISITS).read_bytes().splitlines(keepends=True)
    (killed / VISITS).write_bytes(lines[0] + b"{oops\n" + b"".join(lines[1:]))
    before = snapshot(killed)
    result = cli("latency", "measure", "--resume", str(killed))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert f"{killed / VISITS}: line 2 is damaged" in result.err
    assert snapshot(killed) == before


def test_resume_true_continues_the_named_run(killed_template, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(killed_template, root / "killed")
    run = nasbench.measure_latency(config(root, "killed"), resume=True, quiet=True)
    assert run.path == root / "killed" and run.status == "completed"
    assert np.isfinite(run.read_table("latency")["latency_ms"]).all()
