"""The quickstart runs the whole pipeline into one run with a sub-run per step."""

from __future__ import annotations

import pytest

from nasbench.runs import load_run


@pytest.mark.slow
def test_quickstart_runs_the_whole_pipeline(cli, tmp_path):
    result = cli("quickstart", "--set", f"run.root={tmp_path}", "--set", "epochs=1",
                 "--set", "latency_samples=10", "--set", "search_budget=8", "--set", "population=4")
    assert result.code == 0, result.err
    run = load_run(tmp_path / "quickstart")
    assert run.status == "completed"
    for step in ("train", "latency", "search", "prune"):
        assert load_run(run.path / step).status == "completed", step
    summary = run.manifest["summary"]
    search = load_run(run.path / "search")
    assert len(search.evaluations) == 8 and not search.pareto.empty
    assert (search.path / summary["exported"]).exists()
    assert summary["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.0 <= summary["prune"]["acc_finetuned"] <= 1.0
    assert (run.path / "prune" / "pruned.onnx").exists()
    assert "Open next" in result.out


@pytest.mark.slow
def test_python_quickstart_returns_the_run_tree_it_wrote(tmp_path):
    import nasbench

    run = nasbench.quickstart(quiet=True, epochs=1, latency_samples=10, search_budget=6, population=4,
                              finetune_epochs=0, **{"run.root": tmp_path})
    assert run.path == tmp_path / "quickstart" and run.status == "completed"
    assert type(run.config).__name__ == "QuickstartConfig" and run.config.search_budget == 6
    steps = {step: load_run(run.path / step) for step in ("train", "latency", "search", "prune")}
    assert all(step.status == "completed" for step in steps.values())
    assert len(steps["search"].evaluations) == 6
    prune = run.manifest["summary"]["prune"]
    assert prune["acc_finetuned"] == prune["acc_pruned"]  # finetune_epochs=0: nothing trained after
