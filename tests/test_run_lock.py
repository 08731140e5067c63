"""The run lock: one writer per run directory; a second is refused, a killed one's lock is free."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nasbench.runs import list_runs, load_run, start_run
from nasbench.runs.store import LOCK, LOCK_INFO, RunLock
from nasbench_core.errors import RunError

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from nasbench.runs import start_run
with start_run("train", {}, 0, root=sys.argv[1], name="held") as run:
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another live process holding the run `held` (it writes it, as a train run would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_run_another_live_process_writes_is_refused(holder, tmp_path):
    run_dir = tmp_path / "held"
    expected = f"run {run_dir} is in use by pid {holder.pid} on host {socket.gethostname()}"
    with pytest.raises(RunError) as info, start_run("train", {}, 0, resume=run_dir):
        pytest.fail("a second writer got in")
    assert str(info.value) == expected
    with pytest.raises(RunError, match=f"in use by pid {holder.pid}"), \
            start_run("train", {}, 0, root=tmp_path, name="held", overwrite=True):
        pytest.fail("overwrite emptied a run another process writes")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and "resumes" not in manifest  # the refusals wrote nothing
    assert json.loads((run_dir / LOCK_INFO).read_text())["pid"] == holder.pid
    # Reading is never locked: listing and loading a run in use still work.
    assert list_runs(tmp_path)["run"].tolist() == ["held"] and load_run(run_dir).tables() == []


def test_a_sigkilled_holders_lock_is_taken_over(holder, tmp_path):
    run_dir = tmp_path / "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert json.loads((run_dir / LOCK_INFO).read_text())["pid"] == holder.pid  # stale sidecar
    with start_run("train", {}, 0, resume=run_dir) as run:
        assert json.loads((run_dir / LOCK_INFO).read_text()) | {"since": None} == {
            "pid": os.getpid(), "host": socket.gethostname(), "since": None}
    assert run.status == "completed" and len(run.manifest["resumes"]) == 1
    assert not (run_dir / LOCK_INFO).exists()  # released: the sidecar goes with the lock


def test_the_lock_is_released_on_exit_and_on_error_and_refuses_this_process_too(tmp_path):
    with start_run("train", {}, 0, root=tmp_path, name="r") as run:
        with pytest.raises(RunError, match=f"run {run.path} is in use by pid {os.getpid()} on host "), \
                start_run("train", {}, 0, resume=run.path):
            pass
        assert run.status == "running" and run.lock.held
    assert not run.lock.held
    RunLock(run.path).acquire().release()  # free after a normal exit
    with pytest.raises(ValueError, match="boom"), \
            start_run("train", {}, 0, resume=run.path, reopen_completed=True) as failed:
        assert failed.lock.held
        raise ValueError("boom")
    assert load_run(run.path).status == "failed" and not failed.lock.held
    RunLock(run.path).acquire().release()  # free after an error (not just garbage-collected)
    with start_run("train", {}, 0, root=tmp_path, name="c"):
        pass
    with pytest.raises(RunError, match="already completed"), start_run("train", {}, 0, resume=tmp_path / "c"):
        pass
    RunLock(tmp_path / "c").acquire().release()  # a refused resume does not keep the lock


def test_runs_nested_in_a_run_have_their_own_locks(tmp_path):
    with start_run("quickstart", {}, 0, root=tmp_path, name="q") as parent:
        with start_run("train", {}, 0, root=parent.path, name="train") as child:
            assert (child.path / LOCK).exists() and (parent.path / LOCK).exists()
            with pytest.raises(RunError, match="in use"):
                RunLock(parent.path).acquire()
        RunLock(child.path).acquire().release()
    with start_run("quickstart", {}, 0, root=tmp_path, name="q", overwrite=True) as again:
        assert sorted(p.name for p in again.path.iterdir()) == [LOCK, LOCK_INFO, "config.yaml",
                                                               "manifest.json"]
    # Lock files are hidden: listing and `results` see runs and tables only.
    assert list_runs(tmp_path)["run"].tolist() == ["q"] and again.tables() == []



HOLD_SEARCH = """
import sys, time
from nasbench.runs import start_run
with start_run("search", {}, 0, root=sys.argv[1], name="held") as run:
    print("locked", flush=True)
    time.sleep(600)
"""


def test_export_refuses_a_search_run_another_process_still_writes(tmp_path):
    import nasbench

    proc = subprocess.Popen([sys.executable, "-c", HOLD_SEARCH, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in (tmp_path / "held").iterdir())
        with pytest.raises(RunError, match=f"is in use by pid {proc.pid}"):
            nasbench.export(tmp_path / "held", arch_id="x")
        assert sorted(p.name for p in (tmp_path / "held").iterdir()) == before
    finally:
        proc.kill()
        proc.wait(timeout=30)
