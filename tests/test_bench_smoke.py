"""Every registered benchmark runs end to end in --quick mode and keeps its side-by-side facts.

`optimizers`, `supernets` and `zero_cost` have their own tests; `ray` needs a cluster (tests/test_ray*)."""

from __future__ import annotations

import json

import pytest

from nasbench.bench.registry import BenchOptions, list_benchmarks, run_benchmark

COVERED_ELSEWHERE = {"optimizers", "supernets", "ray", "zero_cost", "search_ray"}


def _cuda_ext(fig):
    for case in ("linear335m", "resnet50"):  # names kept; --quick shrinks the tensors
        assert fig[case]["same_threshold_as_kthvalue"]
        assert fig[case]["same_pruned_count_as_global_unstructured"]


def _pruning(fig):
    for case in ("linear5m", "resnet18"):
        rows = fig["speed"][case]
        totals = {m: rows[m]["pruned"] for m in ("ours_select", "ours_prune", "ours_permanent",
                                                 "global_unstructured")}
        assert len(set(totals.values())) == 1, totals
        assert rows["permanent_extra_peak_pct_of_weights"] < rows["select_extra_peak_pct_of_weights"]
    table = {(r["method"], r["sparsity"]): r for r in fig["quality"]["table"] if r["model"] == "mlp"}
    for sp in (0.8, 0.95):  # an MLP's MACs are its weights: the FLOPs-budget DP is the params DP
        assert table["layer_dp_flops", sp]["distortion_mean"] == table["layer_dp", sp]["distortion_mean"]
        assert table["layer_dp_flops", sp]["macs_removed_mean"] == pytest.approx(sp, abs=1e-3)
        for method in ("structured_layer_dp", "structured_uniform"):  # measured on the shrunk model
            assert table[method, sp]["macs_removed_mean"] >= sp - 1e-9


def _latency(fig):
    assert fig["n_test"] >= 10 and -1 <= fig["learned"]["test"]["kendall_tau"] <= 1
    robust = fig["robust"]
    assert robust["busy_alive_throughout"] and robust["n_archs"] == 6
    for name in ("old_defaults", "new_defaults"):
        assert -1 <= robust[name]["retest_tau"] <= 1


def _mos(fig):
    for family in ("vit", "mbv3"):
        assert fig["families"][family]["overhead"]["param_ratio"]["plain"] == 1.0


def _search(fig):
    assert set(fig["hypervolume"]) == {"nsga2", "linas", "optuna", "random"}
    assert fig["goals"]["no_duplicate_evaluations"]
    for name, q in fig["hypervolume"].items():
        assert q["duplicate_share"]["per_seed"] == [0.0] * len(fig["seeds"]), name
    assert set(fig["hv_change_vs_reference"]) == set(fig["hypervolume"])


def _early_stopping(fig):
    full, horizon = fig["no_stopping"], fig["table"]["horizon"]
    assert full["stopped"]["per_seed"] == [0] and full["front_recall"]["per_seed"] == [1.0]
    assert full["epochs"]["per_seed"] == [fig["archs_per_search"] * horizon]
    [variant] = fig["stopping"].values()
    [stopped], [spent] = variant["stopped"]["per_seed"], variant["epochs"]["per_seed"]
    saved = full["epochs"]["per_seed"][0] - spent  # each stop saves 1..horizon-min_epochs epochs
    assert stopped <= saved <= stopped * (horizon - fig["min_epochs"])


def _joint(fig):  # equal evaluations, the front's prunings, one reference point: brute force
    from tests.test_bench_joint import check_report

    check_report(fig)


CHECKS = {"cuda_ext": _cuda_ext, "early_stopping": _early_stopping, "pruning": _pruning,
          "latency": _latency, "mos": _mos, "search": _search, "joint": _joint}


def test_every_benchmark_has_a_smoke_check():
    names = {b.name for b in list_benchmarks()} - COVERED_ELSEWHERE
    assert {n for n in names if not n.startswith("_")} == set(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_benchmark_runs_quick(name, tmp_path):
    report, target = run_benchmark(name, BenchOptions(quick=True, out_dir=tmp_path))
    assert json.loads(target.read_text())["benchmark"] == name
    CHECKS[name](report["figures"])
