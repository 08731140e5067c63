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
    assert res.code == 2 and "held-out metrics come from 2 rows" in res.err  # 8 rows: refused
    assert not (run / "latency_predictor.json").exists()
    res = cli("latency", "fit", str(run), "--regressors", "ridge", "--folds", "2", "--holdout", "0.25",
              "--force")
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


def synthetic_latency_run(root, name: str, n: int, noise: float, d0_extra: float = 0.5):
    """A latency run whose table is latency = f(arch) (+ multiplicative noise), as `measure`
    writes it: a quick stand-in for timing real subnets. MACs count every dimension alike;
    `d0_extra` makes d0 cost more latency than its MACs say (0: MACs rank perfectly)."""
    import numpy as np

    from nasbench.runs import start_run
    from supernets.space import SearchSpace

    space = SearchSpace({f"d{i}": (1, 2, 3, 4) for i in range(5)})
    rng = np.random.default_rng(0)
    archs = {space.arch_id(a): a for a in (space.sample(rng) for _ in range(4 * n))}
    rows = []
    for aid, arch in list(archs.items())[:n]:
        base = 0.2 * sum(arch.values()) + d0_extra * arch["d0"]
        rows.append({"arch_id": aid, "arch": space.canonical_json(arch),
                     "latency_ms": base * float(np.exp(noise * rng.standard_normal())),
                     "latency_ms_iqr": 0.01, "macs": 1000 * sum(arch.values()), "params": 10,
                     "device": "cpu:test", "backend": "torch", "batch": 1, "threads": 1})
    with start_run("latency", {}, 0, root=root, name=name) as run:
        run.update_manifest(space=space.to_dict(), space_fingerprint=space.fingerprint())
        run.write_table("latency", pd.DataFrame(rows))
    return run.path


UNTRUSTED = [  # (n, noise, d0_extra) -> the one reason the fit is not trusted
    pytest.param(40, 0.0, 0.5, "held-out metrics come from 10 rows (fewer than 20)", id="few-rows"),
    pytest.param(100, 3.0, 0.5, "MAPE is", id="mape"),
    pytest.param(100, 0.0, 0.0, "held-out Kendall tau 0.954 is below the MACs proxy's 1.000",
                 id="tau-below-macs"),
]


def test_a_trustworthy_fit_is_saved_without_warnings(tmp_path):
    import nasbench

    fitted = nasbench.fit_latency(synthetic_latency_run(tmp_path, "lat", 100, 0.0),
                                  regressors="ridge", folds=2)
    assert fitted.warnings == [] and not fitted.forced and fitted.predictor.exists()
    assert fitted.holdout["n"] == 25
    assert fitted.holdout["kendall_tau"] > fitted.holdout["macs_kendall_tau"]


@pytest.mark.parametrize(("n", "noise", "d0_extra", "reason"), UNTRUSTED)
def test_an_untrusted_fit_is_refused_without_force(tmp_path, cli, n, noise, d0_extra, reason):
    import nasbench
    from nasbench.runners.latency import FitRefused

    run = synthetic_latency_run(tmp_path, "lat", n, noise, d0_extra)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(FitRefused, match="pass --force") as refused:
        nasbench.fit_latency(run, regressors="ridge", folds=2, quiet=True)
    message = str(refused.value)
    head, tail = "latency predictor not saved: ", "; pass --force (force=True) to save it anyway"
    assert message.startswith(head) and message.endswith(tail)
    reasons = message[len(head):-len(tail)].split("; ")
    assert len(reasons) == 1 and reasons[0].startswith(reason)
    res = cli("latency", "fit", str(run), "--regressors", "ridge", "--folds", "2")
    assert res.code == 2 and reason in res.err and len(res.err.strip().splitlines()) == 1
    assert f"warning: {reason}" in res.out  # the CLI shows the warning itself, too
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


@pytest.mark.parametrize(("n", "noise", "d0_extra", "reason"), UNTRUSTED)
def test_force_saves_an_untrusted_fit_with_its_warnings(tmp_path, capsys, n, noise, d0_extra, reason):
    import nasbench

    fitted = nasbench.fit_latency(synthetic_latency_run(tmp_path, "lat", n, noise, d0_extra),
                                  regressors="ridge", folds=2, force=True)
    assert len(fitted.warnings) == 1 and fitted.warnings[0].startswith(reason)
    assert fitted.forced and fitted.predictor.exists()
    saved = json.loads((fitted.run.path / "latency_fit.json").read_text())
    assert saved["warnings"] == fitted.warnings and saved["forced"] is True
    assert f"warning: {fitted.warnings[0]}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_lookup_table_fits_from_the_cli_and_predicts_in_a_search(cli, tmp_path, monkeypatch):
    """`latency fit --lut`: OFA-style per-block table, the same trust checks, then usable as a
    search's latency_ms_pred; a prediction is the sum of the arch's timed blocks + constant."""
    import nasbench
    import supernets
    from search.latency import LatencyLUT, block_specs
    from search.latency.measure import LatencyResult
    from tests.test_api import tiny_search

    sets = ["latency.n=12", "latency.warmup=1", "latency.repeats=3", "latency.threads=1",
            "latency.rounds=1", "latency.max_retimes=0", "latency.resolution=16",
            "supernet.in_chans=1", f"run.root={tmp_path}", "run.name=lat"]
    assert cli("latency", "measure", *[a for s in sets for a in ("--set", s)]).code == 0
    run = tmp_path / "lat"
    refused = cli("latency", "fit", str(run), "--lut")
    assert refused.code == 2 and "latency lookup table not saved: held-out metrics come from 3 rows" \
        in refused.err and not (run / "latency_lut.json").exists()
    assert cli("latency", "fit", str(run), "--lut", "--force").code == 0

    import search.latency.lut as lut_module

    new_block_ms = 1000.0  # blocks the table lacks are timed on use: a known stand-in here
    monkeypatch.setattr(lut_module, "measure_latency",
                        lambda *a, **k: LatencyResult(new_block_ms, 0.0, (new_block_ms,)))
    cfg = tiny_search(tmp_path, "s", ["top1", "latency_ms_pred"])
    cfg.update(budget=3, latency={"threads": 1},  # the table's device key
               predictors={"latency_ms_pred": str(run / "latency_lut.json")})
    searched = nasbench.search(cfg, quiet=True)
    lut = LatencyLUT.load(run / "latency_lut.json")
    net = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)
    for _, row in searched.evaluations.iterrows():
        specs = block_specs(net, net.space.parse(row["arch"]), (1, 16, 16))
        unique = {s.key: s for s in specs}  # a block new to the table is timed once, then known
        lut.entries.update({k: {"ms": new_block_ms} for k in unique if k not in lut.entries})
        expected = sum(lut.entries[s.key]["ms"] for s in specs) + lut.constant_ms
        assert row["latency_ms_pred"] == pytest.approx(expected, rel=1e-9)
