"""An arch's top1 is a function of the arch alone: every measurement of a run (in any order, in
another process, after a resume, and of the exported ONNX file) recalibrates BN and scores on
the run's one stored, seeded subset of samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nasbench
from nasbench.data import load_dataset
from nasbench.data.fixed import FILE, FixedSubset
from nasbench.runners.config import stored_config
from nasbench.runners.search import SearchConfig, _objectives, load_supernet
from nasbench_core.errors import RunError
from search.evaluations import read_table

ROOT = Path(__file__).resolve().parents[1]


def tiny_search(root, name: str, **overrides) -> dict:
    cfg = {"supernet": {"family": "mbv3", "preset": "tiny"},
           "data": {"name": "digits", "resolution": 16, "channels": 1, "limit": 300,
                    "batch_size": 32},
           "objectives": ["top1", "params"],
           "optimizer": {"name": "random", "settings": {"batch_size": 3}}, "budget": 6,
           "evaluation": {"bn_batches": 2, "val_batches": 2}, "run": {"root": root, "name": name}}
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixed")
    return nasbench.search(tiny_search(root, "a"), quiet=True)


def remeasure(run, archs: list[str]) -> list[float]:
    """top1 of `archs` as a fresh process measures them from the run's files alone."""
    cfg = stored_config(run, SearchConfig)
    net, data, _ = load_supernet(cfg, "cpu")
    objectives, _ = _objectives(cfg, [], net, data, FixedSubset.read(run.path), {})
    top1 = next(o for o in objectives if o.name == "top1")
    return [top1.fn(net.space.parse(a)) for a in archs]


def test_the_subset_is_seeded_and_cut_from_unaugmented_samples():
    from nasbench.config import DataConfig

    data = load_dataset(DataConfig(name="digits", limit=300, batch_size=32), seed=0)
    one = FixedSubset.draw(data, bn_batches=2, val_batches=None, seed=0)
    assert one == FixedSubset.draw(data, bn_batches=2, val_batches=None, seed=0)
    assert one.calib != FixedSubset.draw(data, bn_batches=2, val_batches=None, seed=1).calib
    assert len(one.calib) == 64 and len(set(one.calib)) == 64
    assert one.val == tuple(range(len(data.val_dataset)))
    calib, val = one.loaders(data)
    assert [len(y) for _, y in calib] == [32, 32]
    assert sum(len(y) for _, y in val) == len(data.val_dataset)


def test_top1_of_an_arch_does_not_depend_on_what_was_measured_before(searched):
    df = searched.evaluations
    archs = df["arch"].tolist()[::-1]  # the other order, in another process
    code = ("import json, sys; from nasbench.runs import load_run; "
            "from tests.test_fixed_calibration import remeasure; "
            "print(json.dumps(remeasure(load_run(sys.argv[1]), json.loads(sys.argv[2]))))")
    child = subprocess.run([sys.executable, "-c", code, str(searched.path), json.dumps(archs)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(child.stdout.splitlines()[-1]) == df["top1"].tolist()[::-1]
    assert remeasure(searched, archs[:2]) == df["top1"].tolist()[::-1][:2]  # and in this one
    assert df["top1"].nunique() > 1  # the archs differ, so equality above is not vacuous


def test_a_resumed_run_measures_every_arch_as_an_uninterrupted_one(searched, tmp_path):
    base = tiny_search(tmp_path, "b")
    first = nasbench.search(base, budget=3, quiet=True)
    manifest = json.loads((first.path / "manifest.json").read_text())
    (first.path / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    resumed = nasbench.search(base, resume=True, quiet=True)
    a = searched.evaluations.set_index("arch_id")["top1"]
    b = resumed.evaluations.set_index("arch_id")["top1"]
    common = a.index.intersection(b.index)
    assert len(common) >= 4
    assert (a[common] == b[common]).all()
    _, meta = read_table(resumed.path / "evaluations.parquet")
    assert meta["calibration"] == FixedSubset.read(resumed.path).id


def test_the_exported_onnx_scores_exactly_what_the_table_says(searched):
    best = searched.evaluations.sort_values("top1").iloc[-1]
    result = nasbench.export(searched, arch_id=best["arch_id"], quiet=True)
    assert result.exported_top1 == pytest.approx(float(best["top1"]), abs=0)
    assert result.metrics["top1"] == float(best["top1"])


def test_a_resume_with_other_evaluation_settings_is_refused(searched):
    cfg = searched.config.model_copy(deep=True)
    cfg.evaluation.bn_batches = 3
    cfg.budget = 8
    with pytest.raises(RunError, match="keep the run's evaluation settings"):
        nasbench.search(cfg, resume=True, quiet=True)
    assert len(read_table(searched.path / "evaluations.parquet")[0]) == 6


def test_an_edited_subset_file_is_refused(tmp_path):
    from nasbench.config import DataConfig

    data = load_dataset(DataConfig(name="digits", limit=300, batch_size=32), seed=0)
    FixedSubset.for_run(tmp_path, data, bn_batches=1, val_batches=1, seed=0)
    doc = json.loads((tmp_path / FILE).read_text())
    doc["calib"][0] = doc["calib"][1]
    (tmp_path / FILE).write_text(json.dumps(doc))
    with pytest.raises(RunError, match="was edited"):
        FixedSubset.read(tmp_path)
    (tmp_path / FILE).write_text("{")
    with pytest.raises(RunError, match="unreadable"):
        FixedSubset.read(tmp_path)
