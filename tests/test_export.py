"""`nasbench export` and `nasbench.onnx_export.export_onnx`: verified ONNX, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nasbench.onnx_export import ExportMismatchError, export_onnx
from nasbench.runs import load_run, start_run
from nasbench_core.errors import UserError
from search.evaluations import table_dtypes, write_table
from supernets.space import SearchSpace
from tests.test_cli import assert_one_line_error
from tests.test_search_cli import FAST, write_config


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_export_onnx_has_dynamic_batch_and_matches(tmp_path):
    net = small_net()
    result = export_onnx(net, (1, 8, 8), tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    out = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-5)


def test_export_onnx_mismatch_is_an_error(tmp_path):
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_onnx(small_net(), (1, 8, 8), tmp_path / "m.onnx", atol=-1.0)


SPACE = SearchSpace({"a": [1, 2], "b": [3, 4]})


@pytest.fixture
def fake_search_run(tmp_path):
    """A search run with a small evaluations table (no supernet needed to pick rows)."""
    archs = [{"a": 1, "b": 3}, {"a": 2, "b": 3}, {"a": 2, "b": 4}]
    df = pd.DataFrame({
        "arch_id": [SPACE.arch_id(a) for a in archs],
        "arch": [SPACE.canonical_json(a) for a in archs],
        "top1": [0.5, 0.7, 0.9], "latency_ms": [1.0, 2.0, 6.0],
        "source": "measured", "device": "cpu", "seed": 0, "generation": 0, "timestamp": 0.0,
    })
    with start_run("search", {}, 0, root=tmp_path, name="r") as run:
        write_table(run.path / "evaluations.parquet", df,
                    {"objectives": ["top1", "latency_ms"],
                     "directions": {"top1": "max", "latency_ms": "min"}})
    return run.path, df


def test_choose_row_picks_most_accurate_meeting_constraint(fake_search_run):
    from nasbench.runners.export import choose_row
    from search.evaluations import read_table

    path, df = fake_search_run
    table, meta = read_table(path / "evaluations.parquet")
    row = choose_row(table, meta, arch_id=None, pick=["latency_ms<=5"], objective=None)
    assert row["arch_id"] == df["arch_id"][1]
    row = choose_row(table, meta, arch_id=None, pick=["top1 >= 0.6"], objective="latency_ms")
    assert row["arch_id"] == df["arch_id"][1]  # latency is minimised
    assert choose_row(table, meta, arch_id=df["arch_id"][2], pick=[],
                      objective=None)["top1"] == 0.9


@pytest.mark.parametrize(("args", "needles"), [
    (["--pick", "params<=2e6"], ["unknown column 'params'"]),
    (["--pick", "latency_ms<=5", "--objective", "acc"], ["unknown objective 'acc'"]),
    (["--arch-id", "000000000000"], ["arch_id '000000000000' is not in this run"]),
    (["--pick", "latency_ms<=0.5"], ["no arch on this run's Pareto front", "latency_ms <= 0.5",
                                      "--from all"]),
    (["--pick", "latency_ms<=0.5", "--from", "all"], ["no evaluated arch meets latency_ms <= 0.5"]),
    (["--pick", "latency_ms<=5", "--from", "pareto"], ["--from must be one of front, all",
                                                      "'pareto'"]),
    (["--arch-id", "000000000000", "--from", "all"], ["--from only applies to --pick"]),
    ([], ["exactly one of --arch-id"]),
])
def test_export_mistakes_are_one_line_errors(cli, fake_search_run, args, needles):
    path, _ = fake_search_run
    assert_one_line_error(cli("export", str(path), *args), *needles)


def test_export_of_a_non_search_run_is_an_error(cli, tmp_path):
    with start_run("train", {}, 0, root=tmp_path, name="t") as run:
        pass
    assert_one_line_error(cli("export", str(run.path), "--arch-id", "x"), "not a search run")


@pytest.mark.slow
def test_search_then_export_roundtrip(cli, tmp_path):
    assert cli("search", write_config(tmp_path), *FAST, "--quiet").code == 0
    run = load_run(tmp_path / "results" / "s")
    result = cli("export", str(run.path), "--pick", "params <= 1e9")
    assert result.code == 0, result.err
    assert "onnxruntime max abs diff" in result.out
    # The most accurate arch of the run's front; front members tied on top1 have equal params
    # (else one would dominate), so the smaller arch_id wins.
    front = run.evaluations[run.evaluations["is_pareto"]]
    tied = front[front["top1"] == front["top1"].max()]
    aid = sorted(tied["arch_id"])[0]
    assert next((run.path / "subnets").glob("*.onnx")).stem == aid
    picked = json.loads((run.path / "subnets" / f"{aid}.json").read_text())
    assert picked["picked_by"] == ["params <= 1e9"] and picked["picked_from"] == "front"
    chosen = [line for line in result.out.splitlines() if line.startswith("chosen")]
    assert chosen == [f"chosen {aid}: top1={tied['top1'].iloc[0]:.4g} "
                      f"params={int(tied['params'].iloc[0])} "
                      f"(front, {len(run.evaluations)} feasible of {len(run.evaluations)})"]
    assert (run.path / "subnets" / f"{aid}.safetensors").exists()
    manifest = load_run(run.path).manifest
    assert manifest["exports"][aid]["onnx"] == f"subnets/{aid}.onnx"
    assert manifest["exports"][aid]["max_abs_diff"] <= 1e-4

    # The exported subnet is a model `nasbench prune` takes as it is.
    from nasbench.runners.export import load_exported_subnet

    subnet = load_exported_subnet(run.path, aid)
    session = ort.InferenceSession(str(run.path / "subnets" / f"{aid}.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(2, *picked["input_shape"][1:])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0],
                               subnet(x).detach().numpy(), atol=1e-4)
    prune_cfg = tmp_path / "prune.yaml"
    prune_cfg.write_text(json.dumps({
        "run": {"name": "p", "root": str(tmp_path / "results")},
        "data": {"name": "digits", "batch_size": 16, "limit": 96},
        "model": {"source": "export", "run": str(run.path), "arch_id": aid},
        "prune": {"method": "global_magnitude", "sparsity": 0.5}, "finetune": {"epochs": 1},
    }))
    result = cli("prune", str(prune_cfg), "--quiet")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "results" / "p" / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert summary["onnx_max_abs_diff"] <= 1e-4


def test_prune_of_an_unexported_arch_is_a_one_line_error(cli, fake_search_run, tmp_path):
    path, df = fake_search_run
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(json.dumps({"model": {"source": "export", "run": str(path),
                                         "arch_id": df["arch_id"][0]}}))
    assert_one_line_error(cli("prune", str(cfg)), "has no export of arch", "nasbench export")
    cfg.write_text(json.dumps({"model": {"source": "export"}}))
    assert_one_line_error(cli("prune", str(cfg)), "needs model.run and model.arch_id")


# -- which arch --pick chooses ---------------------------------------------------------------
def evaluations(rows: list[dict], objectives: list[str], directions: dict[str, str]):
    """A hand-built evaluations table (stored dtypes) and its metadata; arch ids are the row
    names given, so tests can name the rows."""
    df = pd.DataFrame([{"arch": json.dumps({"name": r["arch_id"]}), **r} for r in rows])
    df = df.assign(source="measured", device="cpu", seed=0, generation=0, timestamp=0.0)
    return table_dtypes(df), {"objectives": objectives, "directions": directions}


# A run searched for top1 x latency_ms_pred under `macs <= 800000` (macs measured only for the
# constraint). "huge" has the best top1 and the lowest latency, so without the constraint it
# would dominate every other arch; "slow" is feasible but dominated by "small".
CONSTRAINED = evaluations([
    {"arch_id": "huge", "top1": 0.95, "latency_ms_pred": 1.0, "macs": 1_960_000},
    {"arch_id": "mid", "top1": 0.85, "latency_ms_pred": 1.5, "macs": 700_000},
    {"arch_id": "small", "top1": 0.80, "latency_ms_pred": 1.2, "macs": 600_000},
    {"arch_id": "slow", "top1": 0.70, "latency_ms_pred": 3.0, "macs": 500_000},
], ["top1", "latency_ms_pred"], {"top1": "max", "latency_ms_pred": "min", "macs": "min"})
CONSTRAINTS = ["macs <= 800000"]


def pick_row(table, pick, *, objective=None, constraints=(), pick_from=None):
    from nasbench.runners.export import choose_row

    df, meta = table
    return choose_row(df, meta, arch_id=None, pick=pick, objective=objective,
                      constraints=constraints, objectives=meta["objectives"], pick_from=pick_from)


@pytest.mark.parametrize("pick", [["latency_ms_pred<=1.8"], ["top1>=0.5"], ["macs<=1e7"]])
def test_pick_never_returns_a_row_violating_the_runs_constraints(pick):
    row = pick_row(CONSTRAINED, pick, constraints=CONSTRAINTS)
    assert row["arch_id"] == "mid"
    assert row["macs"] <= 800_000


def test_pick_among_all_evaluations_can_leave_the_front():
    assert pick_row(CONSTRAINED, ["latency_ms_pred<=1.8"], constraints=CONSTRAINTS,
                    pick_from="all")["arch_id"] == "huge"
    # "slow" is the only arch this slow, and it is off the front: an error naming --from all.
    with pytest.raises(UserError, match="no arch on this run's Pareto front .*--from all"):
        pick_row(CONSTRAINED, ["latency_ms_pred>=2.5"], constraints=CONSTRAINTS)
    assert pick_row(CONSTRAINED, ["latency_ms_pred>=2.5"], constraints=CONSTRAINTS,
                    pick_from="all")["arch_id"] == "slow"


def test_arch_id_exports_exactly_that_arch_front_or_not():
    from nasbench.runners.export import choose_row

    df, meta = CONSTRAINED
    for aid in ("huge", "slow"):
        row = choose_row(df, meta, arch_id=aid, pick=[], objective=None,
                         constraints=CONSTRAINTS, objectives=meta["objectives"])
        assert row["arch_id"] == aid


TIED = evaluations([
    {"arch_id": "worse", "top1": 0.8, "latency_ms": 3.0},   # dominated by "better"
    {"arch_id": "better", "top1": 0.8, "latency_ms": 2.0},
    {"arch_id": "fast", "top1": 0.6, "latency_ms": 1.0},
], ["top1", "latency_ms"], {"top1": "max", "latency_ms": "min"})


def test_a_dominated_row_tied_on_top1_is_never_chosen():
    from nasbench.runners.export import choose_row

    df, meta = TIED
    # The original signature (no run config): the front is still the table's own front.
    assert choose_row(df, meta, arch_id=None, pick=["latency_ms<=5"],
                      objective=None)["arch_id"] == "better"
    # Among all evaluations too, the tie goes to the row that dominates the other.
    assert pick_row(TIED, ["latency_ms<=5"], pick_from="all")["arch_id"] == "better"


def test_among_all_evaluations_a_tie_goes_to_the_dominating_row_before_latency():
    # Objectives top1 x params (latency measured for constraints only): "b" dominates "a",
    # though "a" has the lower latency and the smaller arch_id.
    table = evaluations([
        {"arch_id": "a", "top1": 0.8, "latency_ms": 1.0, "params": 5.0},
        {"arch_id": "b", "top1": 0.8, "latency_ms": 2.0, "params": 3.0},
    ], ["top1", "params"], {"top1": "max", "params": "min", "latency_ms": "min"})
    for pick_from in ("front", "all"):
        assert pick_row(table, ["params<=10"], pick_from=pick_from)["arch_id"] == "b"


def test_ties_on_the_front_go_to_lower_latency_then_arch_id():
    # params makes both 0.8 rows non-dominated; the lower latency wins the tie.
    table = evaluations([
        {"arch_id": "a", "top1": 0.8, "latency_ms": 2.0, "params": 1.0},
        {"arch_id": "b", "top1": 0.8, "latency_ms": 1.0, "params": 5.0},
    ], ["top1", "latency_ms", "params"], {"top1": "max", "latency_ms": "min", "params": "min"})
    assert pick_row(table, ["params<=10"])["arch_id"] == "b"
    twins = evaluations([
        {"arch_id": "d", "top1": 0.8, "latency_ms_pred": 2.0, "macs": 9.0},
        {"arch_id": "c", "top1": 0.8, "latency_ms_pred": 2.0, "macs": 1.0},
    ], ["top1", "latency_ms_pred"], {"top1": "max", "latency_ms_pred": "min", "macs": "min"})
    # Same objectives: both on the front, same latency (latency_ms_pred is preferred over macs
    # as the latency), so arch_id decides.
    assert pick_row(twins, ["macs<=10"])["arch_id"] == "c"


def _reference_pick(rows, objectives, constraints, picks, objective, pick_from):
    """The documented rule in plain Python, for the property test."""
    def dominates(p, q):
        return (all(p[o] * s >= q[o] * s for o, s in objectives.items())
                and any(p[o] * s > q[o] * s for o, s in objectives.items()))

    feasible = [r for r in rows if all(c(r) for c in constraints)]
    pool = rows if pick_from == "all" else [
        r for r in feasible if not any(dominates(q, r) for q in feasible)]
    pool = [r for r in pool if all(c(r) for c in picks)]
    if not pool:
        return None
    sign = objectives.get(objective, 1)
    best = max(r[objective] * sign for r in pool)
    tied = [r for r in pool if r[objective] * sign == best]
    tied = [r for r in tied if not any(dominates(q, r) for q in tied)]
    return min(tied, key=lambda r: (r["latency_ms"], r["arch_id"]))["arch_id"]


ROW = st.fixed_dictionaries({
    "top1": st.sampled_from([0.5, 0.6, 0.7]), "latency_ms": st.sampled_from([1.0, 2.0, 3.0]),
    "params": st.sampled_from([1.0, 2.0]),
})


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=st.lists(ROW, min_size=1, max_size=14),
       objective=st.sampled_from(["top1", "latency_ms"]),
       pick_from=st.sampled_from(["front", "all"]),
       pick=st.sampled_from(["latency_ms <= 2.5", "latency_ms >= 2", "top1 <= 0.6"]),
       seed=st.integers(0, 2**16))
def test_choice_follows_the_rule_and_ignores_row_order(rows, objective, pick_from, pick, seed):
    from search import parse_constraint

    rows = [{"arch_id": f"{i:02d}", **r} for i, r in enumerate(rows)]
    signs = {"top1": 1, "latency_ms": -1, "params": -1}
    budget = parse_constraint(pick)
    expected = _reference_pick(rows, signs, [lambda r: r["params"] <= 1.5],
                               [lambda r: bool(budget.satisfied(r[budget.column]))],
                               objective, pick_from)
    df, meta = evaluations(rows, ["top1", "latency_ms", "params"],
                           {"top1": "max", "latency_ms": "min", "params": "min"})
    rng = np.random.default_rng(seed)
    for _ in range(3):
        shuffled = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
        try:
            got = pick_row((shuffled, meta), [pick], objective=objective,
                           constraints=["params <= 1.5"], pick_from=pick_from)["arch_id"]
        except UserError:
            got = None
        assert got == expected


# -- the CLI says what it chose ---------------------------------------------------------------
@pytest.fixture
def constrained_run(tmp_path, monkeypatch):
    """A search run constrained to macs <= 800000, with a stub supernet that stops the export
    at the arch it was asked to extract: "stub supernet: would export NAME"."""
    import types

    import nasbench.runners.search as search_runner

    def parse(arch_json):
        raise UserError(f"stub supernet: would export {json.loads(arch_json)['name']}")

    stub = types.SimpleNamespace(space=types.SimpleNamespace(parse=parse))
    monkeypatch.setattr(search_runner, "load_supernet",
                        lambda *args, **kwargs: (stub, None, {"trained": False}))
    df, meta = CONSTRAINED
    config = {"objectives": meta["objectives"], "constraints": CONSTRAINTS}
    with start_run("search", config, 0, root=tmp_path, name="c") as run:
        write_table(run.path / "evaluations.parquet", df, meta)
    return run.path


def test_export_of_a_constrained_run_never_extracts_an_infeasible_arch(cli, constrained_run):
    # "huge" (1.96M MACs) has the best top1 and meets the pick; the run allows 800k MACs.
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8", "--quiet")
    assert "stub supernet: would export mid" in result.err
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8",
                 "--from", "all", "--quiet")
    assert "stub supernet: would export huge" in result.err


def test_cli_prints_the_chosen_row_from_the_runs_front(cli, constrained_run):
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8")
    assert "would export mid" in result.err
    assert result.out.splitlines()[0] == (
        "chosen mid: top1=0.85 latency_ms_pred=1.5 (front, 3 feasible of 4)")
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8",
                 "--from", "all")
    assert result.out.splitlines()[0] == (
        "chosen huge: top1=0.95 latency_ms_pred=1 (all, 3 feasible of 4; not on the front)")
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8",
                 "--objective", "macs")
    assert result.out.splitlines()[0] == (
        "chosen small: top1=0.8 latency_ms_pred=1.2 macs=600000 (front, 3 feasible of 4)")
    result = cli("export", str(constrained_run), "--arch-id", "huge")
    assert result.out.splitlines()[0] == "chosen huge: top1=0.95 latency_ms_pred=1 (--arch-id)"
    result = cli("export", str(constrained_run), "--pick", "latency_ms_pred<=1.8", "--quiet")
    assert "would export mid" in result.err and result.out == ""


def test_exports_recorded_before_picked_from_read_as_none(tmp_path):
    from nasbench.runners.export import exported

    record = {"arch": {"a": 1}, "metrics": {"top1": 0.5}, "trained": False,
              "onnx": "subnets/x.onnx", "safetensors": "subnets/x.safetensors",
              "input_shape": [1, 1, 8, 8], "max_abs_diff": 0.0, "opset": 17,
              "picked_by": ["top1>=0"]}
    with start_run("search", {}, 0, root=tmp_path, name="old") as run:
        run.update_manifest(exports={"x": record})
    result = exported(run.path, "x")
    assert result.picked_by == ["top1>=0"] and result.picked_from is None
