"""`nasbench bench supernets` in quick mode: the figures exist and are well formed (no timing asserts)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_supernets_benchmark_quick_extract_and_step_speed(tmp_path):
    pytest.importorskip("ofa", reason="the peers extra (pip install ofa) is not installed")
    from nasbench.bench.registry import BenchOptions, run_benchmark

    opts = BenchOptions(quick=True, params={"parts": "extract_speed,step_speed", "threads": 1},
                        out_dir=tmp_path)
    report, path = run_benchmark("supernets", opts)
    assert path.exists()
    figures = report["figures"]
    rows = figures["extract_speed"]["rows"]
    assert {(r["arch"], r["batch"]) for r in rows} == {
        (a, b) for a in ("smallest", "random", "largest") for b in (1, 64)
    }
    speed = figures["step_speed"]
    assert speed["params_nasbench"] == speed["params_ofa"]  # same space, same width
    assert speed["speedup_vs_ofa"] > 0


@pytest.mark.slow
def test_supernets_benchmark_quick_ofa_extract_and_ddp(tmp_path):
    """Our extracted subnet and OFA's compute the same function (weights mapped by from_ofa);
    under 2-process gloo DDP every sandwich step all-reduces once."""
    pytest.importorskip("ofa", reason="the peers extra (pip install ofa) is not installed")
    from nasbench.bench.registry import BenchOptions, run_benchmark

    opts = BenchOptions(quick=True, params={"parts": "ofa_extract,ddp", "threads": 1},
                        out_dir=tmp_path)
    report, _ = run_benchmark("supernets", opts)
    ofa = report["figures"]["ofa_extract"]
    assert {(r["family"], r["batch"], r["layout"]) for r in ofa["rows"]} == {
        ("mbv3", b, layout) for b in (1, 16) for layout in ("contiguous", "channels_last")}
    assert ofa["min_output_scale"] > 0.2  # a scale at which 1e-5 means "equal"
    assert ofa["max_abs_diff"] <= 1e-5 and ofa["min_speedup"] > 0
    ddp = report["figures"]["ddp"]
    assert ddp["all_reduces_per_step"]["2_workers"] == [1] * (ddp["timed_steps"] + 1)
    assert ddp["one_all_reduce_per_step"] and ddp["speedup_2_vs_1"] > 0


@pytest.mark.slow
def test_supernets_quality_quick_recipes_share_archs_and_scratch(tmp_path, monkeypatch):
    """Each recipe trains its own supernet (bignas's settings reach training: its weights differ
    from default's), while the archs and the scratch baselines are shared: trained once per
    seed, not once per recipe. The gaps and tau agree with a recomputation from the rows."""
    import numpy as np
    from scipy.stats import kendalltau

    import supernets.training.standalone as standalone
    from nasbench.bench.registry import BenchOptions, run_benchmark

    calls = []
    real = standalone.train_standalone
    monkeypatch.setattr(standalone, "train_standalone",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = BenchOptions(quick=True, out_dir=tmp_path, params={
        "parts": "quality", "threads": 1, "quality_recipes": "default,bignas"})
    q = run_benchmark("supernets", opts)[0]["figures"]["quality"]
    assert q["recipes"] == ["default", "bignas"] and q["seeds"] == [0] and len(q["archs"]) == 8
    assert len(calls) == len(q["archs"])  # one scratch baseline per arch and seed, shared
    default, bignas = q["runs"]
    assert (default["recipe"], bignas["recipe"]) == ("default", "bignas")
    assert default["recipe_settings"] == {} and bignas["recipe_settings"]["zero_init_residual"]
    assert bignas["param_norm"] != default["param_norm"]  # the recipes trained different nets
    scratch = np.array(q["scratch"][0]["scratch_acc"])
    for run in q["runs"]:
        inherited = np.array(run["inherited_acc"])
        assert run["steps"] == q["steps"] and len(inherited) == len(scratch)
        assert run["mean_abs_gap"] == pytest.approx(np.abs(inherited - scratch).mean(), abs=1e-4)
        assert run["mean_signed_gap"] == pytest.approx((inherited - scratch).mean(), abs=1e-4)
        tau = kendalltau(inherited, scratch).statistic
        assert run["kendall_tau"] == (None if np.isnan(tau) else pytest.approx(tau, abs=1e-3))
    assert q["summary"]["bignas"]["mean_abs_gap"]["per_seed"] == [bignas["mean_abs_gap"]]
