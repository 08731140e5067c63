"""Benchmark harness: discovery, environment facts, JSON written atomically."""

from __future__ import annotations

import json

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, list_benchmarks, run_benchmark


class ProbeSettings(BenchSettings):
    x: int = 0
    size: int = 10

    quick_defaults = {"size": 2}


def test_registered_benchmark_writes_json_with_environment(tmp_path, cli):
    @benchmark("_probe", help="test probe", options=ProbeSettings)
    def probe(opts: BenchOptions) -> dict:
        s = ProbeSettings.of(opts)
        return {"quick": opts.quick, "x": s.x, "size": s.size, "ratio": 2.0}

    report, target = run_benchmark("_probe", BenchOptions(quick=True, params={"x": 3}, out_dir=tmp_path))
    assert target == tmp_path / "_probe.json"
    on_disk = json.loads(target.read_text())
    assert on_disk["figures"] == {"quick": True, "x": 3, "size": 2, "ratio": 2.0}
    assert on_disk["params"] == {"x": 3}  # as given; the settings are the benchmark's business
    env = on_disk["environment"]
    assert env["cpu_count"] >= 1 and env["torch_threads"] >= 1 and env["torch_version"] and env["device"] == "cpu"
    assert "_probe" in [b.name for b in list_benchmarks()]
    result = cli("bench", "_probe", "--quick", "--set", "x=5", "--set", "size=7", "--out-dir", str(tmp_path))
    assert result.code == 0 and '"x": 5' in result.out and '"size": 7' in result.out
    assert cli("bench", "--list").code == 0
