"""`nasbench latency measure | fit | evaluate` end to end, and their one-line user errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from search.latency import COLUMNS


@pytest.mark.slow
def test_measure_fit_evaluate_round_trip(cli, tmp_path):
    sets = ["latency.n=8", "latency.warmup=1", "latency.repeats=3", "latency.threads=1",
            "latency.pool_factor=1", f"run.root={tmp_path}", "run.name=lat"]
    res = cli("latency", "measure", *[a for s in sets for a in ("--set", s)])
    assert res.code == 0, res.err
    run = tmp_path / "lat"
    table = pd.read_parquet(run / "latency.parquet")
    assert list(table.columns) == COLUMNS and len(table) == 8
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["device"]["key"] == table["device"].iloc[0]
    assert manifest["space_fingerprint"] and manifest["device"]["threads"] == 1

    res = cli("latency", "fit", str(run), "--regressors", "ridge", "--folds", "2", "--holdout", "0.25")
    assert res.code == 0, res.err
    assert "Kendall tau" in res.out and "MACs proxy tau" in res.out
    saved = json.loads((run / "latency_predictor.json").read_text())
    assert saved["model"]["name"] == "ridge" and saved["n_train"] == 8
    assert json.loads((run / "latency_fit.json").read_text())["holdout"]["n"] == 2

    res = cli("latency", "evaluate", str(run), str(run))
    assert res.code == 0, res.err
    assert "n=8" in res.out


def test_fit_on_a_run_without_latency_table_is_a_user_error(cli, tmp_path):
    run = tmp_path / "other"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "train", "status": "completed"}))
    res = cli("latency", "fit", str(run))
    assert res.code == 2
    assert "has no latency table" in res.err


def test_measure_rejects_unknown_settings(cli, tmp_path):
    res = cli("latency", "measure", "--set", "latency.backend=tvm", "--set", f"run.root={tmp_path}")
    assert res.code == 2
    assert "latency.backend" in res.err


def test_measure_rebuilds_the_supernet_of_a_train_run(tmp_path):
    from nasbench.errors import RunError
    from nasbench.runners.latency import SupernetSection, _build_supernet

    run = tmp_path / "train-run"
    run.mkdir()
    build = {"name": "mbv3", "num_classes": 5, "in_chans": 1, "width_mult": 1.0,
             "preset": "tiny", "mos": None}
    (run / "manifest.json").write_text(json.dumps({"command": "train", "supernet": build}))
    net = _build_supernet(SupernetSection(from_run=run))
    assert net.build_config() == build
    (run / "manifest.json").write_text(json.dumps({"command": "prune"}))
    with pytest.raises(RunError, match="records no supernet"):
        _build_supernet(SupernetSection(from_run=run))


def synthetic_latency_run(root, name: str, n: int, noise: float):
    """A latency run whose table is latency = f(arch) (+ multiplicative noise), as `measure`
    writes it: a quick stand-in for timing real subnets."""
    import numpy as np

    from nasbench.runs import start_run
    from supernets.space import SearchSpace

    space = SearchSpace({f"d{i}": (1, 2, 3, 4) for i in range(5)})
    rng = np.random.default_rng(0)
    archs = {space.arch_id(a): a for a in (space.sample(rng) for _ in range(4 * n))}
    rows = []
    for aid, arch in list(archs.items())[:n]:
        base = 0.2 * sum(arch.values())
        rows.append({"arch_id": aid, "arch": space.canonical_json(arch),
                     "latency_ms": base * float(np.exp(noise * rng.standard_normal())),
                     "latency_iqr_ms": 0.01, "macs": 1000 * sum(arch.values()), "params": 10,
                     "device": "cpu:test", "backend": "torch", "batch": 1, "threads": 1})
    with start_run("latency", {}, 0, root=root, name=name) as run:
        run.update_manifest(space=space.to_dict(), space_fingerprint=space.fingerprint())
        run.write_table("latency", pd.DataFrame(rows))
    return run.path


@pytest.mark.parametrize(("n", "noise", "expected"), [
    (60, 0.0, []),
    (16, 0.0, ["held-out metrics come from 4 rows"]),
    (60, 3.0, ["cross-validated MAPE is"]),
])
def test_fit_warns_when_its_numbers_cannot_be_trusted(tmp_path, capsys, n, noise, expected):
    import nasbench

    fitted = nasbench.fit_latency(synthetic_latency_run(tmp_path, "lat", n, noise),
                                  regressors="ridge", folds=2)
    assert [w[: len(e)] for w, e in zip(fitted.warnings, expected, strict=False)] == expected
    assert len(fitted.warnings) == len(expected)
    saved = json.loads((fitted.run.path / "latency_fit.json").read_text())
    assert saved["warnings"] == fitted.warnings
    assert all(f"warning: {w}" in capsys.readouterr().out for w in fitted.warnings[:1])
