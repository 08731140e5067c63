"""`nasbench prune --resume` of lottery runs: a killed run continues to the same bits as an
uninterrupted one (in process, and after a real SIGKILL), and resumes that cannot continue the
run as it was are refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml

CONFIG = {
    "run": {"name": "lt", "seed": 3},
    "data": {"name": "digits", "resolution": 16, "channels": 1, "batch_size": 32, "limit": 128},
    "model": {"source": "timm", "name": "test_resnet"},
    "prune": {"method": "lottery", "sparsity": 0.4,
              "kwargs": {"train": "5it", "rewind": "2it", "controls": ["random", "reinit"]}},
    "finetune": {"epochs": 1},
    "onnx": False,
}


def write_config(tmp_path: Path, name: str) -> Path:
    cfg = {**CONFIG, "run": {**CONFIG["run"], "name": name, "root": str(tmp_path / "results")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def same_run_bits(a: Path, b: Path) -> None:
    """Masks, final weights, every lottery file and the metrics rows are bitwise equal."""
    files = sorted(p.relative_to(a) for p in (a / "lottery").rglob("*.safetensors"))
    assert files == sorted(p.relative_to(b) for p in (b / "lottery").rglob("*.safetensors"))
    for rel in [Path("masks.safetensors"), Path("pruned.safetensors"), *files]:
        x, y = safetensors.torch.load_file(str(a / rel)), safetensors.torch.load_file(str(b / rel))
        assert x.keys() == y.keys(), rel
        assert all(torch.equal(x[k], y[k]) for k in x), rel
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    pd.testing.assert_frame_equal(ma, mb)


def interrupt_at(monkeypatch, call: int) -> None:
    """Make the runner's train_fn raise KeyboardInterrupt two steps into its `call`-th call."""
    import nasbench.classify

    original, calls = nasbench.classify.adam_train_fn, []

    def patched(*args, **kwargs):
        train = original(*args, **kwargs)

        def killed(model, start, end, on_step):
            calls.append(1)

            def step(it, ep):
                on_step(it, ep)
                if len(calls) == call and it == start.steps(4) + 2:
                    raise KeyboardInterrupt
            train(model, start, end, step)

        return killed

    monkeypatch.setattr(nasbench.classify, "adam_train_fn", patched)


def test_a_killed_lottery_run_resumes_from_the_cli_to_the_same_bits(cli, tmp_path, monkeypatch):
    """Interrupted during level 2, `nasbench prune --resume RUN` finishes it; masks, weights,
    controls and metrics equal an uninterrupted run's, and the controls' accuracies are in the
    metrics and the summary."""
    assert cli("prune", str(write_config(tmp_path, "full")), "--quiet").code == 0
    with monkeypatch.context() as m:
        interrupt_at(m, call=3)  # level 0, level 1, then level 2
        assert cli("prune", str(write_config(tmp_path, "cut")), "--quiet").code != 0
    cut = tmp_path / "results" / "cut"
    assert json.loads((cut / "manifest.json").read_text())["status"] == "failed"
    assert "level_2" not in set(pd.read_csv(cut / "metrics.csv")["stage"])
    res = cli("prune", "--resume", str(cut), "--quiet")
    assert res.code == 0, res.err
    full = tmp_path / "results" / "full"
    same_run_bits(full, cut)
    stages = list(pd.read_csv(cut / "metrics.csv")["stage"])
    assert stages == ["dense", *(f"level_{i}" for i in range(4)), "control_random",
                      "control_reinit", "pruned", "finetuned"]
    summary = json.loads((cut / "summary.json").read_text())
    assert {"acc_control_random", "acc_control_reinit"} <= summary.keys()


@pytest.mark.parametrize(("sets", "message"), [
    (["prune.kwargs.rewind=1it"], "cannot resume {run}: prune.kwargs.rewind was '2it', now '1it'"),
    (["prune.kwargs.fraction=0.3"], "prune.kwargs.fraction was None, now 0.3"),
    (["prune.method=uniform", "prune.kwargs={}"], "prune --resume continues lottery runs"),
])
def test_a_resume_that_cannot_continue_the_run_is_one_line_exit_2(cli, tmp_path, monkeypatch,
                                                                   sets, message):
    with monkeypatch.context() as m:
        interrupt_at(m, call=2)
        assert cli("prune", str(write_config(tmp_path, "cut")), "--quiet").code != 0
    run = tmp_path / "results" / "cut"
    before = sorted(p.name for p in run.rglob("*"))
    res = cli("prune", "--resume", str(run), *(a for s in sets for a in ("--set", s)))
    assert res.code == 2
    assert message.format(run=run) in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing touched


KILLER = textwrap.dedent("""
    import os, signal, sys
    import nasbench.classify

    original, calls = nasbench.classify.adam_train_fn, []

    def patched(*args, **kwargs):
        train = original(*args, **kwargs)

        def killed(model, start, end, on_step):
            calls.append(1)

            def step(it, ep):
                on_step(it, ep)
                if len(calls) == 4 and it == start.steps(4) + 2:  # during level 3
                    os.kill(os.getpid(), signal.SIGKILL)
            train(model, start, end, step)

        return killed

    nasbench.classify.adam_train_fn = patched
    from nasbench.cli import main
    main(["prune", sys.argv[1], "--quiet"])
""")


@pytest.mark.slow
def test_a_sigkilled_lottery_run_resumes_to_the_same_bits(tmp_path, nasbench_exe):
    """A real SIGKILL in the middle of level 3 (separate process), then `nasbench prune --resume`
    in another: the run equals an uninterrupted one run by a third process, bit for bit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full = subprocess.run([*nasbench_exe, "prune", str(write_config(tmp_path, "full")), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    killed = subprocess.run([sys.executable, "-c", KILLER, str(write_config(tmp_path, "cut"))],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut = tmp_path / "results" / "cut"
    assert json.loads((cut / "manifest.json").read_text())["status"] == "running"
    state = json.loads((cut / "lottery" / "state.json").read_text())
    assert [r["level"] for r in state["levels"]] == [0, 1, 2]
    resumed = subprocess.run([*nasbench_exe, "prune", "--resume", str(cut), "--quiet"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    same_run_bits(tmp_path / "results" / "full", cut)


@pytest.mark.parametrize(("sets", "message"), [
    (["prune.kwargs.layers_to_ignore=[head.*]"], "layers_to_ignore pattern 'head.*' matches no pruned layer"),
    (["prune.kwargs.output_rate=0.1", "prune.kwargs.layers_to_ignore=[fc.weight]"],
     "which layers_to_ignore keeps dense"),
    (["prune.kwargs.controls=[random,random]"], "names a control twice"),
])
def test_bad_lottery_settings_are_refused_before_the_run_directory(cli, tmp_path, sets, message):
    res = cli("prune", str(write_config(tmp_path, "bad")), *(a for s in sets for a in ("--set", s)))
    assert res.code == 2
    assert message in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
