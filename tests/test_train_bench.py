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
