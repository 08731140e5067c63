"""The kill suite (issue 19 §5): a real `nasbench` process is SIGKILLed after its k-th durable
write (for `latency measure`, its k-th journaled visit), then resumed. After each kill no file
is half-written, nothing measured before the kill is lost beyond the item in flight, and the
resumed result equals an uninterrupted run's: bitwise final weights
for `train`, masks and weights for a lottery `prune`, the same rows and values for `search`, the
same subnets for `latency measure` with every median and IQR from its journaled samples.

The kill points come from a seeded RNG, so a red run names a reproducible point; two more kill
a lottery exactly between a level's durable state and its metrics row. The default suite kills
once per command; with the slow suite, 24 distinct points: train 6, search 6, prune (lottery) 8,
latency measure 4."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import yaml

import nasbench
from search.evaluations import log_path, read_log
from search.latency.journal import VISITS
from search.latency.measure import Visit
from tests.test_durable_search import tiny_search
from tests.test_latency_resume import kept_attempt
from tests.test_lottery_resume import CONFIG as LOTTERY
from tests.test_lottery_resume import same_run_bits
from tests.test_train_kill_resume import DETERMINISTIC, same_weights, tiny

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TIMEOUT = 300.0


class Unkilled(AssertionError):
    """The process ended before its kill point: the point was past the end of the run."""


def kill_when(args: list[str], ready: Callable[[], bool], tmp_path: Path) -> None:
    """Start `nasbench *args`, poll `ready()` every few ms and SIGKILL the process once it holds."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    err = (tmp_path / "killed.err").open("w")
    proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            if proc.poll() is not None:
                raise Unkilled(f"exit {proc.returncode} before the kill point: "
                               f"{(tmp_path / 'killed.err').read_text()[-2000:]}")
            assert time.monotonic() < deadline, "kill point not reached in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        err.close()


def count(pattern: str, where: Path) -> Callable[[], int]:
    return lambda: len(list(where.glob(pattern))) if where.exists() else 0


def lines(path: Path) -> Callable[[], int]:
    """Complete (newline-terminated) lines in `path`: each is one durable row."""
    return lambda: path.read_bytes().count(b"\n") if path.exists() else 0


def assert_intact(run_dir: Path) -> None:
    """Every file the tool reads is whole: JSON parses, Parquet opens, safetensors load, CSV
    parses, journal lines parse but for a torn last one. Temp files a kill left behind are the
    hidden `.NAME.*.tmp` siblings of atomic writes (nasbench_core.atomic) and safetensors' own
    `.tmpXXXXXX` (its Rust writer's temp file), which no reader opens."""
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = path.name
        if name.startswith("."):
            assert name.endswith(".tmp") or re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", name) \
                or name in {".lock", ".lock.json"}, path
            if name == ".lock.json":
                json.loads(path.read_text())
            continue
        if name.endswith(".jsonl"):
            body = path.read_bytes()
            for line in body[: body.rfind(b"\n") + 1].splitlines():
                json.loads(line)
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".parquet"):
            pq.read_table(path)
        elif name.endswith(".safetensors"):
            safetensors.torch.load_file(str(path))
        elif name.endswith(".csv"):
            pd.read_csv(path)
        elif name.endswith((".yaml", ".yml")):
            yaml.safe_load(path.read_text())


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["status"]


def resume(*args: str) -> None:
    """`nasbench *args --quiet` (a resume or a reference run) in this process: the CLI's code
    path without the seconds a fresh interpreter spends importing torch. The killed process
    shares nothing with this one."""
    from nasbench.cli import main

    try:
        main([*args, "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None), f"nasbench {' '.join(args)} exited {exc.code}"


def _exe() -> str:
    import sys

    exe = Path(sys.executable).with_name("nasbench")
    assert exe.exists(), exe
    return str(exe)


def write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    return path


# ---- train ------------------------------------------------------------------------------

TRAIN = {"max_steps_per_epoch": 6, "checkpoint_every": 2}
"""3 epochs of 6 steps, a step checkpoint every 2: 9 checkpoints, each a durable write."""


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_ref")
    return nasbench.train(tiny(root, "ref", **TRAIN), quiet=True).path


def checkpoints_seen(run_dir: Path, k: int) -> Callable[[], bool]:
    """True once k distinct checkpoints have appeared (the runner prunes old ones, so files on
    disk are not a count; each lives at least two steps, far longer than the poll)."""
    seen: set[str] = set()

    def ready() -> bool:
        where = run_dir / "checkpoints"
        if where.exists():
            seen.update(p.name for p in where.glob("epoch_*.json"))
        return len(seen) >= k

    return ready


def check_train_kill(tmp_path: Path, reference: Path, k: int) -> None:
    """Kill once the k-th checkpoint (step or epoch) is on disk, resume, compare."""
    cfg = write(tmp_path / "train.yaml", tiny(tmp_path / "results", "killed", **TRAIN))
    run_dir = tmp_path / "results" / "killed"
    kill_when([_exe(), "train", str(cfg), "--quiet"], checkpoints_seen(run_dir, k), tmp_path)
    assert status(run_dir) == "running"
    assert_intact(run_dir)
    before = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else None
    resume("train", "--resume", str(run_dir))
    assert status(run_dir) == "completed"
    assert_intact(run_dir)
    metrics, ref = pd.read_csv(run_dir / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    if before is not None:  # every row on disk at the kill is still there, unchanged
        pd.testing.assert_frame_equal(metrics[DETERMINISTIC].head(len(before)),
                                      before[DETERMINISTIC])
    pd.testing.assert_frame_equal(metrics[DETERMINISTIC], ref[DETERMINISTIC])
    same_weights(reference / "checkpoints" / "epoch_0003", run_dir / "checkpoints" / "epoch_0003")


# ---- search -----------------------------------------------------------------------------

BUDGET = 10
VALUES = ["arch_id", "top1", "params"]
"""Equal to the uninterrupted run's; `generation` is not: a resume opens a new generation."""


@pytest.fixture(scope="module")
def search_reference(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("search_ref")
    path = nasbench.search(tiny_search(root, "ref", BUDGET), quiet=True).path
    return nasbench.load_run(path).evaluations  # as the resumed run is read: same dtypes


def check_search_kill(tmp_path: Path, reference: pd.DataFrame, k: int) -> None:
    """Kill once k evaluations are journaled, resume, compare with the uninterrupted table."""
    cfg = write(tmp_path / "search.yaml", tiny_search(tmp_path / "results", "killed", BUDGET))
    run_dir = tmp_path / "results" / "killed"
    journal = log_path(run_dir / "evaluations.parquet")
    kill_when([_exe(), "search", str(cfg), "--quiet"], lambda: lines(journal)() >= k, tmp_path)
    assert status(run_dir) == "running"
    assert_intact(run_dir)
    journaled = read_log(journal)
    assert len(journaled) >= k
    resume("search", "--resume", str(run_dir))
    assert status(run_dir) == "completed"
    assert_intact(run_dir)
    final = nasbench.load_run(run_dir).evaluations
    kept = final.set_index("arch_id").loc[journaled["arch_id"]]  # nothing journaled is lost...
    for column in ["top1", "params", "generation", "timestamp"]:  # ... or re-measured
        assert kept[column].tolist() == journaled[column].tolist(), column
    assert read_log(journal)["arch_id"].tolist() == final["arch_id"].tolist()
    for column in VALUES:  # the uninterrupted run's rows, in its order, with its values
        assert final[column].tolist() == reference[column].tolist(), column
    assert final["generation"].is_monotonic_increasing


# ---- prune (lottery) --------------------------------------------------------------------

def lottery_config(root: Path, name: str) -> dict:
    return {**LOTTERY, "run": {**LOTTERY["run"], "name": name, "root": str(root)}}


@pytest.fixture(scope="module")
def lottery_reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lottery_ref")
    resume("prune", str(write(root / "full.yaml", lottery_config(root / "results", "full"))))
    return root / "results" / "full"


def lottery_writes(run_dir: Path) -> Callable[[], int]:
    """Durable lottery writes so far: its safetensors files plus the levels in state.json."""
    files = count("**/*.safetensors", run_dir)

    def n() -> int:
        try:
            levels = len(json.loads((run_dir / "lottery" / "state.json").read_text())["levels"])
        except (OSError, ValueError, KeyError):
            levels = 0
        return files() + levels

    return n


def check_lottery_kill(tmp_path: Path, reference: Path, k: int) -> None:
    cfg = write(tmp_path / "lt.yaml", lottery_config(tmp_path / "results", "killed"))
    run_dir = tmp_path / "results" / "killed"
    writes = lottery_writes(run_dir)
    kill_when([_exe(), "prune", str(cfg), "--quiet"], lambda: writes() >= k, tmp_path)
    assert status(run_dir) == "running"
    assert_intact(run_dir)
    state = run_dir / "lottery" / "state.json"
    levels = json.loads(state.read_text())["levels"] if state.exists() else []
    resume("prune", "--resume", str(run_dir))
    assert status(run_dir) == "completed"
    assert_intact(run_dir)
    after = json.loads(state.read_text())["levels"]
    assert after[: len(levels)] == levels  # finished levels are kept, not redone differently
    same_run_bits(reference, run_dir)


# ---- latency measure --------------------------------------------------------------------

LATENCY = ["latency.n=6", "latency.warmup=1", "latency.repeats=40", "latency.threads=1",
           "latency.pool_factor=1", "latency.rounds=4"]
"""6 subnets x 4 rounds of 10 timed calls: 24 journaled visits before any re-timing."""


def measure(root: Path, name: str) -> list[str]:
    sets = [*LATENCY, f"run.root={root}", f"run.name={name}"]
    return [_exe(), "latency", "measure", *(a for s in sets for a in ("--set", s)), "--quiet"]


def journal_visits(journal: Path) -> list[Visit]:
    """The complete lines of a visit journal, as visits (a torn last line is not one)."""
    body = journal.read_bytes()
    return [Visit(r["attempt"], r["round"], r["index"], tuple(r["samples_ms"]))
            for r in map(json.loads, body[: body.rfind(b"\n") + 1].splitlines())]


def check_latency_kill(tmp_path: Path, k: int, reference: pd.DataFrame) -> None:
    """Kill once k visits are journaled, resume, compare: every visit journaled before the kill
    is still in the journal and none is timed again; the table has the uninterrupted run's
    subnets row for row, and each median and IQR is the journal's (pre-kill samples included)."""
    run_dir = tmp_path / "results" / "killed"
    journal = run_dir / VISITS
    kill_when(measure(tmp_path / "results", "killed"), lambda: lines(journal)() >= k, tmp_path)
    assert status(run_dir) == "running"
    assert_intact(run_dir)
    assert not (run_dir / "latency.parquet").exists() \
        or len(pq.read_table(run_dir / "latency.parquet")) == 6  # none, or a whole one
    before = journal_visits(journal)
    assert len(before) >= k
    resume("latency", "measure", "--resume", str(run_dir))
    assert status(run_dir) == "completed"
    assert_intact(run_dir)
    after = journal_visits(journal)
    assert after[: len(before)] == before  # nothing journaled is lost or rewritten ...
    assert len({v.key for v in after}) == len(after)  # ... or timed again
    table = pd.read_parquet(run_dir / "latency.parquet")
    for column in ["arch_id", "arch", "macs", "params"]:  # the uninterrupted run's rows, in order
        assert table[column].tolist() == reference[column].tolist(), column
    for i, row in table.iterrows():
        visits = [v for v in after if v.index == i]
        for attempt in range(row["latency_ms_retimed"] + 1):  # the uninterrupted sample count
            assert sum(len(v.samples_ms) for v in visits if v.attempt == attempt) == 40
        oracle = kept_attempt(visits, i)
        assert (row["latency_ms"], row["latency_ms_iqr"]) == (oracle.median_ms, oracle.iqr_ms)


@pytest.fixture(scope="module")
def latency_reference(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("latency_ref")
    resume(*measure(root, "ref")[1:-1])
    return pd.read_parquet(root / "ref" / "latency.parquet")


# ---- the kill points --------------------------------------------------------------------

_rng = random.Random(19)
TRAIN_POINTS = sorted(_rng.sample(range(1, 9), 6))
"""k-th checkpoint of 9 (the 9th is the last epoch's: too late to be sure to kill before exit)."""
SEARCH_POINTS = sorted(_rng.sample(range(1, BUDGET), 6))
"""k-th journaled evaluation of 10."""
LOTTERY_POINTS = sorted(_rng.sample(range(1, 16), 6))
"""k-th durable lottery write of 17 (13 safetensors files and 4 levels in state.json)."""
LATENCY_POINTS = sorted(_rng.sample(range(1, 22), 4))
"""k-th journaled visit of 24 before re-timings (the last few are too close to the end)."""


# The default suite: one kill per command, at the first of its points.

def test_a_killed_train_resumes_bitwise(tmp_path, train_reference):
    check_train_kill(tmp_path, train_reference, TRAIN_POINTS[0])


def test_a_killed_search_resumes_to_the_same_table(tmp_path, search_reference):
    check_search_kill(tmp_path, search_reference, SEARCH_POINTS[0])


BETWEEN_STATE_AND_ROW = """
import os, signal, sys
import nasbench.runners.prune as runner
needs = runner._needs
def dying_needs(*args, **kwargs):  # SIGKILL once stage argv[2] is in state.json, before its row
    supplied = needs(*args, **kwargs)
    on_level = supplied["on_level"]
    def on_level_or_die(level, model, control=None):
        if (f"control_{control}" if control else f"level_{level}") == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)
        on_level(level, model, control)
    supplied["on_level"] = on_level_or_die
    return supplied
runner._needs = dying_needs
from nasbench.cli import main
main(["prune", sys.argv[1], "--quiet"])
"""


STAGES = ["dense", "level_0", "level_1", "level_2", "level_3", "control_random"]


@pytest.mark.parametrize("stage", ["level_1", pytest.param("control_random", marks=pytest.mark.slow)])
def test_a_lottery_killed_between_a_level_and_its_row_loses_no_row(tmp_path, lottery_reference,
                                                                   stage):
    """The lottery's durable write (the stage's weights and state.json) is on disk, its metrics
    row is not: the resume rebuilds the row, and the run equals the uninterrupted one."""
    import sys

    cfg = write(tmp_path / "lt.yaml", lottery_config(tmp_path / "results", "killed"))
    run_dir = tmp_path / "results" / "killed"
    killed = subprocess.run([sys.executable, "-c", BETWEEN_STATE_AND_ROW, str(cfg), stage],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_intact(run_dir)
    state = json.loads((run_dir / "lottery" / "state.json").read_text())
    recorded = [f"level_{r['level']}" for r in state["levels"]] + [
        f"control_{r['control']}" for r in state["controls"]]
    assert recorded[-1] == stage  # the stage is durable ...
    logged = list(pd.read_csv(run_dir / "metrics.csv")["stage"])
    assert logged == STAGES[: STAGES.index(stage)]  # ... its row is not
    resume("prune", "--resume", str(run_dir))
    assert_intact(run_dir)
    same_run_bits(lottery_reference, run_dir)  # metrics.csv included: level_1's row is back


def test_a_killed_latency_measure_resumes_keeping_every_journaled_visit(tmp_path,
                                                                         latency_reference):
    check_latency_kill(tmp_path, LATENCY_POINTS[0], latency_reference)


@pytest.mark.slow
@pytest.mark.parametrize("k", TRAIN_POINTS)
def test_train_killed_after_the_kth_checkpoint(tmp_path, train_reference, k):
    check_train_kill(tmp_path, train_reference, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", SEARCH_POINTS)
def test_search_killed_after_the_kth_evaluation(tmp_path, search_reference, k):
    check_search_kill(tmp_path, search_reference, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", LOTTERY_POINTS)
def test_lottery_killed_after_the_kth_write(tmp_path, lottery_reference, k):
    check_lottery_kill(tmp_path, lottery_reference, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", LATENCY_POINTS)
def test_latency_measure_killed_after_the_kth_visit(tmp_path, latency_reference, k):
    check_latency_kill(tmp_path, k, latency_reference)
