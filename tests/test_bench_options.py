"""Every benchmark's `--set` values are checked by its options model before any work starts:
types, ranges, allowed names and unknown keys fail as one line (exit 2), and no report is
written."""

from __future__ import annotations

import pytest

from nasbench.bench.registry import BENCHMARKS, Benchmark, BenchOptions, run_benchmark
from nasbench_core.errors import UserError

NAMES = BENCHMARKS.list()

# Per benchmark: values of the wrong type and values out of range (or not an allowed name),
# each with the text the one-line refusal must carry.
WRONG_TYPE = {
    "cuda_ext": [({"reps": "abc"}, "valid integer"), ({"cases": 3}, "valid list")],
    "latency": [({"n_train": 2.5}, "valid integer"), ({"retest": "maybe"}, "valid boolean"),
                ({"lut": [1]}, "expected auto or a yes/no")],
    "mos": [({"batch": "abc"}, "valid integer"), ({"preset": 3}, "valid string")],
    "optimizers": [({"budgets": 20}, "valid list"), ({"table": 1}, "valid string")],
    "pruning": [({"sparsity": "high"}, "valid number"), ({"peer_large": "sure"}, "valid boolean")],
    "ray": [({"epochs": 1.5}, "valid integer"), ({"address": 5}, "valid string")],
    "search": [({"seeds": True}, "valid integer"), ({"budgets": ["x"]}, "valid integer")],
    "search_ray": [({"budget": "many"}, "valid integer"), ({"address": 5}, "valid string")],
    "zero_cost": [({"archs": "all"}, "valid integer"), ({"proxies": 3}, "valid list")],
    "early_stopping": [({"seeds": "few"}, "valid integer"), ({"deltas": 0.1}, "valid list")],
    "supernets": [({"threads": "2"}, "valid integer"), ({"parts": 1}, "valid list"),
                  ({"ofa_archs": "3"}, "valid integer"), ({"ddp_batch": 2.5}, "valid integer"),
                  ({"quality_recipes": 3}, "valid list"), ({"quality_seeds": "two"}, "valid integer")],
    "joint": [({"evaluations": "many"}, "valid integer"), ({"sparsities": "high"}, "valid list"),
              ({"checkpoint": 3}, "valid string"), ({"round_to": "eight"}, "valid integer")],
}
OUT_OF_RANGE = {
    "cuda_ext": [({"sparsity": 1.0}, "less than 1"), ({"sparsity": 0}, "greater than 0"),
                 ({"reps": 0}, "greater than 0"), ({"cases": "vgg"}, "unknown case 'vgg'"),
                 ({"methods": "cuda_ext,topk"}, "unknown method 'topk'")],
    "latency": [({"n_train": 1}, "greater than or equal to 2"), ({"warmup": -1}, "greater than or equal to 0"),
                ({"backend": "tvm"}, "'torch' or 'onnxruntime'"), ({"family": "vgg"}, "unknown supernet family"),
                ({"regressors": "ridge,xgb"}, "unknown regressor 'xgb'")],
    "mos": [({"timed_steps": 0}, "greater than 0"), ({"archs": -1}, "greater than or equal to 0"),
            ({"families": "vit,resnet"}, "unknown family 'resnet'"), ({"parts": ""}, "at least 1 item")],
    "optimizers": [({"budgets": [10, 0]}, "greater than 0"), ({"budgets": []}, "at least 1 item"),
                   ({"optimizers": ["x"]}, "unknown optimizer 'x'"), ({"problems": "top1"}, "unknown problem")],
    "pruning": [({"sparsity": 1.0}, "less than 1"), ({"sparsity": -0.1}, "greater than or equal to 0"),
                ({"parts": "speed,size"}, "unknown part 'size'"), ({"quality": "fast"}, "'quick' or 'full'"),
                ({"dp_model": "imagenet"}, "'random' or 'mnist5k'")],
    "ray": [({"threads": 0}, "greater than 0"), ({"batch": -4}, "greater than 0")],
    "search": [({"overhead_seeds": 0}, "greater than 0"), ({"optimizers": "nsga2,cmaes"}, "unknown optimizer")],
    "search_ray": [({"workers": 0}, "greater than 0"), ({"pop_size": -1}, "greater than 0")],
    "zero_cost": [({"batch": 1}, "greater than or equal to 2"),
                  ({"proxies": "snip,zen"}, "unknown zero-cost proxy 'zen'")],
    "supernets": [({"resolution": 0}, "greater than 0"), ({"parts": "speed"}, "unknown part 'speed'"),
                  ({"ofa_families": "vit"}, "unknown family 'vit'"), ({"ddp_batch": 7}, "must be even"),
                  ({"ddp_steps": 0}, "greater than 0"),
                  ({"quality_recipes": "default,fancy"}, "unknown recipe 'fancy'"),
                  ({"quality_recipes": "bignas,bignas"}, "must be distinct"),
                  ({"quality_seeds": 0}, "greater than 0"), ({"quality_seeds": 6}, "less than or equal to 5")],
    "early_stopping": [({"deltas": [0.05, 1.0]}, "less than 1"), ({"min_curves": 1}, "greater than or equal to 2"),
                       ({"costs": "latency_ms,flops"}, "unknown cost 'flops'"),
                       ({"problem": "nb301"}, "unknown problem 'nb301'")],
    "joint": [({"evaluations": 1}, "greater than or equal to 2"), ({"evaluations": 3}, "must be >= 4"),
              ({"seeds": 21}, "less than or equal to 20"), ({"sparsities": [0.0, 1.0]}, "less than 1"),
              ({"sparsities": [0.3, 0.5]}, "include 0"), ({"sparsities": [0.0, 0.5, 0.5]}, "distinct"),
              ({"pruner": "lottery"}, "unknown structured pruner 'lottery'"),
              ({"family": "vit"}, "unknown family 'vit'"), ({"optimizer": "cmaes"}, "unknown optimizer"),
              ({"round_to": 0}, "greater than or equal to 1"), ({"round_to": 2048}, "less than or equal to 1024")],
}


def test_every_benchmark_has_refusal_cases():
    assert set(WRONG_TYPE) == set(OUT_OF_RANGE) == {n for n in NAMES if not n.startswith("_")}


@pytest.mark.parametrize("name", NAMES)
def test_defaults_and_quick_defaults_validate(name):
    model = BENCHMARKS.entry(name).options
    settings = BENCHMARKS.validate(name, {})
    assert isinstance(settings, model) and settings.resolve(False) is settings
    assert set(model.quick_defaults) <= set(model.model_fields)
    quick = model.model_validate(model.quick_defaults)  # the quick sizes pass the model's checks
    assert settings.resolve(True) == quick


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_is_refused_in_one_line(name):
    with pytest.raises(UserError) as info:
        BENCHMARKS.validate(name, {"bogus": 1}, where="--set")
    allowed = ", ".join(BENCHMARKS.entry(name).option_names)
    assert str(info.value) == f"--set: benchmark '{name}' has no option 'bogus'; options: {allowed}"


@pytest.mark.parametrize(("name", "values", "needle"),
                         [(n, v, t) for table in (WRONG_TYPE, OUT_OF_RANGE) for n, cases in table.items()
                          for v, t in cases])
def test_wrong_value_is_refused_naming_the_option(name, values, needle):
    [(key, value)] = values.items()
    with pytest.raises(UserError) as info:
        BENCHMARKS.validate(name, values, where="--set")
    text = str(info.value)
    assert text.startswith(f"--set: benchmark '{name}': {key}={value!r}: ") and "\n" not in text
    assert needle in text


@pytest.mark.parametrize(("name", "values", "expected"), [
    ("cuda_ext", {"cases": "resnet50, linear335m"}, {"cases": ["resnet50", "linear335m"]}),
    ("cuda_ext", {"methods": ["kthvalue"]}, {"methods": ["kthvalue"]}),
    ("cuda_ext", {"sparsity": 1e-3}, {"sparsity": 1e-3}),
    ("pruning", {"peer_large": 1}, {"peer_large": True}),  # the documented `--set peer_large=1`
    ("pruning", {"sparsity": 0}, {"sparsity": 0.0}),
    ("latency", {"lut": "auto", "retest": "no"}, {"lut": "auto", "retest": False}),
    ("latency", {"lut": 1, "regressors": "ridge"}, {"lut": True, "regressors": ["ridge"]}),
    ("optimizers", {"optimizers": "nsga2,random"}, {"optimizers": ["nsga2", "random"]}),
    ("mos", {"families": "mbv3", "experts": 2}, {"families": ["mbv3"], "experts": 2}),
])
def test_the_forms_accepted_before_still_are(name, values, expected):
    settings = BENCHMARKS.validate(name, values)
    assert {key: getattr(settings, key) for key in expected} == expected


def test_quick_defaults_yield_to_explicit_values():
    settings = BENCHMARKS.validate("mos", {"timed_steps": 12}).resolve(True)
    assert (settings.timed_steps, settings.steps, settings.archs) == (12, 6, 2)


def _benchmarks_must_not_run(monkeypatch):
    """Route every benchmark to a function that fails: only validation may run."""

    def ran(opts: BenchOptions) -> dict:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(BENCHMARKS, "get", lambda name: Benchmark(name, "", ran))


@pytest.mark.parametrize("name", NAMES)
def test_validation_comes_before_any_work_and_any_report(name, tmp_path, monkeypatch):
    _benchmarks_must_not_run(monkeypatch)
    with pytest.raises(UserError, match="has no option 'bogus'"):
        run_benchmark(name, BenchOptions(quick=True, params={"bogus": 1}, out_dir=tmp_path))
    with pytest.raises(AssertionError, match="the benchmark ran"):  # valid: it would run
        run_benchmark(name, BenchOptions(quick=True, out_dir=tmp_path))
    assert not list(tmp_path.iterdir())


def test_cli_refuses_a_wrong_type_in_one_line_without_a_report(cli, tmp_path, monkeypatch):
    _benchmarks_must_not_run(monkeypatch)
    result = cli("bench", "mos", "--quick", "--set", "batch=abc", "--out-dir", str(tmp_path))
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, result.err
    assert "batch='abc'" in lines[0] and "valid integer" in lines[0]
    assert not list(tmp_path.iterdir())
    typo = cli("bench", "mos", "--quick", "--set", "bach=8", "--out-dir", str(tmp_path))
    assert typo.code == 2 and "has no option 'bach'" in typo.err


def test_a_run_of_some_parts_keeps_the_other_parts_figures():
    from nasbench.bench.registry import merged_figures

    previous = {"timestamp": "t0", "figures": {"speed": {"x": 1}, "quality": {"y": 2}},
                "figure_times": {"speed": "t0", "quality": "t-1"}}
    figures, times = merged_figures(previous, {"speed": {"x": 3}}, "t1")
    assert figures == {"quality": {"y": 2}, "speed": {"x": 3}}
    assert times == {"quality": "t-1", "speed": "t1"}
    assert merged_figures(None, {"speed": 1}, "t1") == ({"speed": 1}, {"speed": "t1"})
    older = {"timestamp": "t0", "figures": {"dp_solve": 5}}  # a report from before figure_times
    assert merged_figures(older, {"speed": 1}, "t1")[1] == {"dp_solve": "t0", "speed": "t1"}
