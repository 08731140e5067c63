"""The public Python API drives every runner end to end, and means what the CLI means."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import nasbench
from nasbench.runners import config_model
from nasbench.runners.config import resolve
from nasbench.runners.search import SearchConfig
from nasbench.runners.train import TrainConfig
from nasbench_core.errors import ConfigError, RunError

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = {"train.epochs": 1, "train.max_steps_per_epoch": 3, "train.warmup_epochs": 0,
              "train.bn_recal_batches": 1, "device": "cpu"}
TINY_LATENCY = {"backend": "torch", "batch": 1, "threads": 1, "warmup": 1, "repeats": 3}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """train -> measure_latency -> fit_latency -> search -> export -> prune, all via `nasbench.*`."""
    root = tmp_path_factory.mktemp("api")
    trained = nasbench.train(ROOT / "examples/train_mbv3_digits.yaml", quiet=True,
                             **{"run.root": root, "run.name": "t"}, **TINY_TRAIN)
    measured = nasbench.measure_latency(
        {"supernet": {"from_run": trained.path}, "latency": {"n": 12, **TINY_LATENCY, "device": "cpu"}},
        quiet=True, run__root=root, run__name="lat")
    fitted = nasbench.fit_latency(measured, quiet=True, folds=2, regressors="ridge", force=True)
    searched = nasbench.search({
        "supernet": {"run": trained.path}, "objectives": ["top1", "latency_ms_pred"],
        "optimizer": {"name": "random", "settings": {"batch_size": 3}}, "budget": 6,
        "evaluation": {"bn_batches": 1, "val_batches": 1}, "latency": TINY_LATENCY,
        "predictors": {"latency_ms_pred": fitted.predictor},
        "run": {"root": root, "name": "s"}}, quiet=True)
    exported = nasbench.export(searched, pick="latency_ms_pred <= 1e9", quiet=True)
    return {"root": root, "train": trained, "latency": measured, "fit": fitted, "search": searched,
            "export": exported}


def test_each_public_function_returns_what_it_wrote(pipeline):
    trained, searched, exported = pipeline["train"], pipeline["search"], pipeline["export"]
    assert isinstance(trained.config, TrainConfig) and trained.config.train["epochs"] == 1
    assert trained.status == "completed" and list(trained.metrics["epoch"]) == [1]
    assert pipeline["latency"].manifest["latency_rows"] == 12
    assert pipeline["fit"].predictor.exists() and pipeline["fit"].model == "ridge"
    assert isinstance(searched.config, SearchConfig) and len(searched.evaluations) == 6
    best = searched.evaluations["top1"].max()
    assert exported.metrics["top1"] == best  # pick maximises top1 by default
    record = nasbench.load_run(searched.path).manifest["exports"][exported.arch_id]
    assert exported.onnx == searched.path / record["onnx"] and exported.onnx.exists()
    assert exported.max_abs_diff <= 1e-4


def test_prune_starts_from_the_export(pipeline):
    exported = pipeline["export"]
    pruned = nasbench.prune({"model": {"source": "export", "run": pipeline["search"].path,
                                       "arch_id": exported.arch_id},
                             "prune": {"method": "global_magnitude", "sparsity": 0.5},
                             "finetune": {"epochs": 0}, "data": {"limit": 200}},
                            quiet=True, run__root=pipeline["root"])
    summary = pruned.manifest["summary"]
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    dense = pruned.metrics.set_index("stage")["val_acc"]["dense"]
    assert dense == summary["acc_dense"]


def test_stored_paths_resolve_from_any_working_folder(pipeline, tmp_path, monkeypatch):
    searched = pipeline["search"]
    stored = searched.manifest["config"]["supernet"]["run"]
    assert Path(stored).is_absolute() and Path(stored) == pipeline["train"].path
    monkeypatch.chdir(tmp_path)
    again = nasbench.export(str(searched.path), arch_id=pipeline["export"].arch_id, quiet=True)
    assert again.arch == pipeline["export"].arch


def test_relative_paths_are_made_absolute_against_the_caller_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve(SearchConfig, {"supernet": {"run": "results/x"}, "predictors": {"top1_pred": "p.json"}})
    assert cfg.supernet.run == tmp_path / "results/x"
    assert cfg.predictors["top1_pred"] == tmp_path / "p.json"
    assert cfg.run.root.is_absolute()


def test_keyword_overrides_mean_what_set_means(tmp_path):
    path = ROOT / "examples/train_mbv3_digits.yaml"
    from_cli = resolve(TrainConfig, path, cli_overrides=["train.epochs=2", "data.augment=true"])
    dotted = resolve(TrainConfig, path, overrides={"train.epochs": 2, "data.augment": True})
    underscored = resolve(TrainConfig, path, overrides={"train__epochs": 2, "data__augment": True})
    model = resolve(TrainConfig, resolve(TrainConfig, path), overrides={"train.epochs": 2, "data.augment": True})
    assert from_cli == dotted == underscored == model
    assert from_cli.train["epochs"] == 2 and from_cli.data.augment is True


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: nasbench.train({"train": {"lrr": 1}}), "config dict: unknown key 'train.lrr'"),
    (lambda: nasbench.train(None, **{"data.batch_size": 0}), "defaults + overrides: key 'data.batch_size'"),
    (lambda: nasbench.search({"budget": "many"}), "key 'budget'"),
    (lambda: nasbench.train(resume=True), "resume=True needs run.name"),
    (lambda: nasbench.train(42), "config must be a dict, a YAML path or a TrainConfig"),
    (lambda: nasbench.search(TrainConfig()), "expected a SearchConfig, got a TrainConfig"),
])
def test_bad_python_calls_are_one_line_user_errors(call, needle):
    with pytest.raises((ConfigError, RunError)) as info:
        call()
    assert needle in str(info.value) and "\n" not in str(info.value)


def tiny_search(root: Path, name: str, objectives: list[str]) -> dict:
    """An untrained tiny mbv3 searched at random: seconds, enough to test resuming."""
    return {"supernet": {"family": "mbv3", "preset": "tiny"},
            "data": {"name": "digits", "resolution": 16, "channels": 1, "limit": 200},
            "objectives": objectives, "optimizer": {"name": "random", "settings": {"batch_size": 2}},
            "evaluation": {"bn_batches": 1, "val_batches": 1}, "run": {"root": root, "name": name}}


def test_search_resume_true_continues_the_named_run(tmp_path):
    base = tiny_search(tmp_path, "r", ["top1", "params"])
    first = nasbench.search(base, budget=2, quiet=True)
    before = first.evaluations
    manifest = json.loads((first.path / "manifest.json").read_text())
    (first.path / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    resumed = nasbench.search(base, budget=4, resume=True, quiet=True)
    assert resumed.path == first.path and len(resumed.evaluations) == 4
    assert resumed.evaluations["arch_id"].iloc[:2].tolist() == before["arch_id"].tolist()
    assert len(resumed.manifest["resumes"]) == 1


def test_a_completed_search_grows_with_a_larger_budget_and_records_it(tmp_path):
    base = tiny_search(tmp_path, "g", ["params", "macs"])
    first = nasbench.search(base, budget=2, quiet=True)
    before = first.evaluations["arch_id"].tolist()
    with pytest.raises(RunError, match="already completed with 2 evaluations; set a budget above 2"):
        nasbench.search(first.config, resume=True, quiet=True)
    assert first.status == "completed"  # the refusal changed nothing
    grown = nasbench.search(first.config, resume=True, budget=5, quiet=True)
    assert len(grown.evaluations) == 5 and grown.status == "completed"
    assert grown.evaluations["arch_id"].iloc[:2].tolist() == before
    assert grown.config.budget == 5 and nasbench.load_run(grown.path).config.budget == 5


def test_budget_plus_n_extends_a_completed_search_from_the_cli(tmp_path, cli):
    first = nasbench.search(tiny_search(tmp_path, "p", ["params", "macs"]), budget=2, quiet=True)
    result = cli("search", "--resume", str(first.path), "--set", "budget=+3", "--quiet")
    assert result.code == 0, result.err
    grown = nasbench.load_run(first.path)
    assert len(grown.evaluations) == 5 and grown.config.budget == 5  # stored as the total
    assert nasbench.search(first.config, resume=True, budget="+1", quiet=True).config.budget == 6
    assert nasbench.search(tiny_search(tmp_path, "new", ["params"]), budget="+2",
                           quiet=True).config.budget == 2  # a new run: N evaluations
    bad = cli("search", "--resume", str(first.path), "--set", "budget=+0", "--quiet")
    assert bad.code == 2 and bad.err.strip() == "nasbench: error: budget +0: add at least one evaluation"
    assert len(nasbench.load_run(first.path).evaluations) == 6


def test_there_is_one_runner_module_per_job_and_each_is_driven_by_a_public_function():
    import importlib
    import pkgutil

    import nasbench.runners

    modules = {m.name for m in pkgutil.iter_modules(nasbench.runners.__path__)}
    assert modules == {"config", "train", "search", "prune", "export", "latency", "quickstart"}
    jobs = {"train": "run", "search": "run", "prune": "run", "quickstart": "run", "export": "export",
            "latency": "measure"}
    for module, fn in jobs.items():
        assert callable(getattr(importlib.import_module(f"nasbench.runners.{module}"), fn))
    public = {"train", "search", "prune", "quickstart", "export", "measure_latency", "fit_latency"}
    assert public <= set(nasbench.__all__) and all(callable(getattr(nasbench, f)) for f in public)


@pytest.mark.parametrize("command", ["train", "search", "prune", "latency", "quickstart"])
def test_every_runner_has_a_config_model_with_defaults(command):
    assert isinstance(resolve(config_model(command)), config_model(command))


def test_nothing_in_nasbench_imports_the_cli_layer():
    """Imports point one way: cli -> commands -> runners -> the rest."""
    offenders = []
    for path in (ROOT / "nasbench").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "commands" or rel.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: {n}" for n in names if n.startswith(("nasbench.commands", "nasbench.cli"))]
    assert offenders == []


def test_rays_private_api_is_used_in_one_module_only():
    """`ray._private`, `ray._raylet` and `ray.init(_...)` live in distributed/ray_private.py."""
    import re

    users = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "nasbench").rglob("*.py")
                   if re.search(r"\bray\._|\"_node_ip_address\"", path.read_text()))
    assert users == ["nasbench/distributed/ray_private.py"]
