"""`nasbench bench optimizers`: normalised hypervolume on a tabular benchmark, reproducible.

Runs on a synthetic 216-row table with the built-in space (values are a fixed function of the
arch), so the test does not depend on the shipped table and takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nasbench.bench import optimizers as bench_opt
from nasbench.bench.registry import BenchOptions, run_benchmark
from nasbench.tabular.builtin import load_builtin
from nasbench.tabular.builtin_space import SPACE
from nasbench.tabular.generate import all_archs


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, arch in enumerate(all_archs()):
        f = SPACE.features(arch).astype(float)
        wobble = ((i * 37) % 11) / 11.0
        rows.append({
            "arch_id": SPACE.arch_id(arch), "arch": SPACE.canonical_json(arch),
            "top1": 80 + 15 * (1 - np.exp(-f.sum() + 0.4 * wobble)),
            "latency_ms": 0.2 + f @ np.array([0.5, 0.3, 0.2, 0.4, 0.2, 0.6]) + 0.05 * wobble,
            "macs": 1e5 * (1 + f.sum()), "params": 1e4 * (1 + f[0] + 2 * f[-1] + f[3]),
        })
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"space": SPACE.to_json().encode()}
    path = tmp_path_factory.mktemp("tab") / "synthetic.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def test_reference_point_and_exhaustive_table_is_one(table_file):
    bench = load_builtin(table_file)
    names = ["top1", "latency_ms"]
    ref = bench_opt.reference_point(bench, names)
    top1, lat = bench.table["top1"], bench.table["latency_ms"]
    assert ref["top1"] == pytest.approx(top1.min() - 0.1 * (top1.max() - top1.min()))
    assert ref["latency_ms"] == pytest.approx(lat.max() + 0.1 * (lat.max() - lat.min()))
    res = bench_opt.compare(bench, names, ["random"], seeds=[0], budgets=[216])
    assert res["optimizers"]["random"]["evaluations"] == [216]
    assert res["optimizers"]["random"]["hv@216"]["mean"] == pytest.approx(1.0)


def _check(opts, names):
    first, target = run_benchmark("optimizers", opts)
    second, _ = run_benchmark("optimizers", opts)
    for problem, res in first["figures"]["problems"].items():
        assert sorted(res["optimizers"]) == sorted(names)
        for name, r in res["optimizers"].items():
            again = second["figures"]["problems"][problem]["optimizers"][name]
            assert r["hv@10"] == again["hv@10"] and r["hv@20"] == again["hv@20"], name
            assert r["evaluations"] == [20, 20]
            for lo, hi in zip(r["hv@10"]["per_seed"], r["hv@20"]["per_seed"], strict=True):
                assert 0 < lo <= hi <= 1
    assert first["figures"]["seeds"] == [3, 4]
    assert json.loads(target.read_text())["figures"]["budgets"] == [10, 20]
    assert (opts.out_dir / "optimizers.png").stat().st_size > 0


def test_same_seed_same_numbers(table_file, tmp_path):
    names = ["nsga2", "random"]
    _check(BenchOptions(quick=True, seed=3, out_dir=tmp_path,
                        params={"table": str(table_file), "budgets": [10, 20], "seeds": 2,
                                "optimizers": names, "problems": ["top1-latency"]}), names)


@pytest.mark.slow
def test_every_registered_optimizer_reproducible(table_file, tmp_path):
    import search

    _check(BenchOptions(quick=True, seed=3, out_dir=tmp_path,
                        params={"table": str(table_file), "budgets": [10, 20], "seeds": 2,
                                "problems": ["top1-latency"]}), search.list_optimizers())


def test_three_objective_problem_compares_nsga3_and_agemoea(table_file, tmp_path):
    report, _ = run_benchmark("optimizers", BenchOptions(
        quick=True, out_dir=tmp_path, params={"table": str(table_file), "budgets": [10],
                                               "seeds": 1, "problems": ["top1-latency-params"]}))
    res = report["figures"]["problems"]["top1-latency-params"]
    assert sorted(res["optimizers"]) == ["agemoea", "nsga2", "nsga3", "random"]
    assert list(res["reference_point"]) == ["top1", "latency_ms", "params"]


def test_unknown_optimizer_is_a_user_error(table_file, tmp_path):
    from nasbench_core.errors import UserError

    opts = BenchOptions(out_dir=tmp_path, params={"table": str(table_file), "optimizers": ["x"]})
    with pytest.raises(UserError, match="unknown optimizer 'x'"):
        run_benchmark("optimizers", opts)
