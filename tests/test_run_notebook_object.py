"""`Run` as the notebook object: typed tables, recomputed `is_pareto`, `.archs`, `.plot`, and
the `nasbench results` listing (rich, plain when captured, honouring NASBENCH_RESULTS)."""

from __future__ import annotations

import json
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import search
from nasbench.runs import load_run, start_run
from nasbench_core.errors import RunError
from search.evaluations import Evaluator, read_table, table_metadata, write_table
from search.objectives import Objective
from supernets.space import SearchSpace

SPACE = SearchSpace({"depth": [1, 2, 3], "width": [8, 16, 32], "kernel": [3, 5, 7]})
# 18 dimensions with long names: its canonical JSON is ~450 characters.
LONG_SPACE = SearchSpace({f"stage{s}.block{b}.kernel_size": [3, 5, 7] for s in range(6) for b in range(3)})


@pytest.fixture(autouse=True)
def _headless_figures():
    """Agg: no display needed, and figures are closed so tests do not accumulate them."""
    matplotlib.use("Agg")
    yield
    plt.close("all")


def objectives() -> tuple[list[Objective], list[Objective]]:
    """top1 (max) x macs (min) are objectives; params is measured only for a constraint."""
    def top1(a: dict) -> float:
        return 1 - 1 / (a["depth"] * a["width"] + a["kernel"])

    def macs(a: dict) -> float:
        return float(a["depth"] * a["width"] * a["kernel"] * 1000)

    def params(a: dict) -> float:
        return float(a["depth"] * a["width"] * 100)

    return ([Objective("top1", top1, "max", "fraction"), Objective("macs", macs, "min", "MACs")],
            [Objective("params", params, "min", "count")])


def evaluated(n: int = 20, seed: int = 0, space: SearchSpace = SPACE,
              metrics: tuple[list[Objective], list[Objective]] | None = None) -> tuple[pd.DataFrame, dict]:
    """The Evaluator's table of `n` distinct sampled archs and its metadata."""
    objs, extra = metrics or objectives()
    ev = Evaluator(space, objs, extra=extra)
    rng = np.random.default_rng(seed)
    while len(ev.df) < n:
        ev.evaluate([space.sample(rng)])
    return ev.df, ev.metadata()


def search_run(tmp_path, df: pd.DataFrame, metadata: dict, constraints=(), name="s"):
    """A search run holding `df` as evaluations.parquet (and pareto.parquet when given)."""
    config = {"objectives": metadata.get("objectives", []), "constraints": list(constraints)}
    with start_run("search", config, 0, root=tmp_path, name=name) as run:
        write_table(run.path / "evaluations.parquet", df, metadata)
    return load_run(run.path)


def brute_force_front(F: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Minimisation: a feasible finite row is on the front unless another feasible finite row is
    <= everywhere and < somewhere."""
    rows = np.flatnonzero(ok & np.isfinite(F).all(axis=1))
    keep = np.zeros(len(F), dtype=bool)
    for i in rows:
        keep[i] = not any((F[j] <= F[i]).all() and (F[j] < F[i]).any() for j in rows)
    return keep


# -- dtypes ---------------------------------------------------------------------------------------
def test_tables_have_exact_dtypes_on_disk_and_on_read(tmp_path):
    df, meta = evaluated()
    run = search_run(tmp_path, df, meta)
    schema = pq.read_schema(run.path / "evaluations.parquet")
    assert schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("macs").type == pa.int64() and schema.field("params").type == pa.int64()
    for table in (run.evaluations, read_table(run.path / "evaluations.parquet")[0]):
        assert table["timestamp"].dtype == "datetime64[ns, UTC]"
        assert table["macs"].dtype == "int64" and table["params"].dtype == "int64"
        assert table["seed"].dtype == "int64" and table["top1"].dtype == "float64"
    assert (run.evaluations["macs"].to_numpy() == df["macs"].to_numpy()).all()


def test_a_missing_count_is_na_in_nullable_int64_never_zero(tmp_path):
    df, meta = evaluated()
    df.loc[3, "macs"] = np.nan
    run = search_run(tmp_path, df, meta)
    macs = run.evaluations["macs"]
    assert macs.dtype == "Int64" and macs.isna().tolist() == [i == 3 for i in range(len(df))]
    assert not run.evaluations["is_pareto"][3]


@pytest.mark.parametrize("stored", ["iso", "seconds"])
def test_older_files_with_string_or_float_timestamps_read_as_utc(tmp_path, stored):
    stamps = pd.to_datetime(["2024-05-01T12:00:00+00:00", "2024-05-01T14:30:00+02:00"], utc=True)
    column = ([s.isoformat() for s in [stamps[0], stamps[1].tz_convert("Europe/Berlin")]]
              if stored == "iso" else [s.timestamp() for s in stamps])
    old = pd.DataFrame({"arch_id": ["a", "b"], "top1": [0.5, 0.6], "macs": [1e6, 2e6],
                        "timestamp": column})
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), tmp_path / "old.parquet")
    df, _ = read_table(tmp_path / "old.parquet")
    assert df["timestamp"].dtype == "datetime64[ns, UTC]" and df["macs"].dtype == "int64"
    assert (df["timestamp"] == pd.Series(stamps)).all()


# -- is_pareto ------------------------------------------------------------------------------------
def test_stored_is_pareto_is_never_trusted(tmp_path):
    df, meta = evaluated()
    lying = df.assign(is_pareto=True)  # every row claims to be on the front
    with start_run("search", {"objectives": ["top1", "macs"]}, 0, root=tmp_path, name="s") as run:
        table = pa.Table.from_pandas(lying, preserve_index=False)
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               b"nasbench.evaluations": json.dumps(meta).encode()})
        pq.write_table(table, run.path / "evaluations.parquet")
    expected = brute_force_front(np.c_[-df["top1"], df["macs"]], np.ones(len(df), dtype=bool))
    assert 0 < expected.sum() < len(df)
    assert load_run(run.path).evaluations["is_pareto"].tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_is_pareto_matches_brute_force_with_nans_and_constraints(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 40
    df, meta = evaluated(n=20)
    df = pd.concat([df] * 2, ignore_index=True)  # 40 rows; values replaced below
    df["top1"] = rng.integers(0, 8, n) / 8  # ties on purpose
    df["macs"] = rng.integers(1, 9, n) * 1e6
    df["params"] = rng.integers(1, 5, n) * 1e5
    df.loc[rng.choice(n, 4, replace=False), "top1"] = np.nan
    df.loc[0, ["top1", "macs", "params"]] = [1.0, 1e5, 9e5]  # dominates all, but violates params
    run = search_run(tmp_path, df, meta, constraints=["params <= 4e5"])
    ok = df["params"].to_numpy() <= 4e5
    expected = brute_force_front(np.c_[-df["top1"], df["macs"]], ok)
    got = run.evaluations["is_pareto"].to_numpy()
    assert got.tolist() == expected.tolist() and not got[0] and got.any()


def test_directions_are_the_objectives_not_constraint_only_metrics(tmp_path):
    df, meta = evaluated()
    assert meta["directions"] == {"top1": "max", "macs": "min", "params": "min"}
    assert search_run(tmp_path, df, meta).directions == {"top1": "max", "macs": "min"}


def test_pareto_table_is_typed_and_recomputed(tmp_path):
    df, meta = evaluated()
    run = search_run(tmp_path, df, meta)
    write_table(run.path / "pareto.parquet", df.head(6), meta)  # a stale "front"
    front = run.pareto
    assert front["macs"].dtype == "int64" and front["timestamp"].dtype == "datetime64[ns, UTC]"
    head = df.head(6)
    assert front["is_pareto"].tolist() == brute_force_front(
        np.c_[-head["top1"], head["macs"]], np.ones(6, dtype=bool)).tolist()


# -- archs ----------------------------------------------------------------------------------------
def test_archs_have_one_int_column_per_dimension_indexed_like_evaluations(tmp_path):
    df, meta = evaluated()
    run = search_run(tmp_path, df, meta)
    evaluations, archs = run.evaluations, run.archs
    assert sorted(archs.columns) == sorted(SPACE.names)
    assert archs.index.equals(evaluations.index)
    assert all(archs[c].dtype == "int64" for c in archs.columns)
    for i, text in evaluations["arch"].items():
        assert archs.loc[i].to_dict() == json.loads(text)
        assert SPACE.arch_id(archs.loc[i].to_dict()) == evaluations.loc[i, "arch_id"]


# -- plot_front -----------------------------------------------------------------------------------
def _front_points(df: pd.DataFrame, directions: dict, ok: np.ndarray) -> pd.DataFrame:
    F = np.c_[[df[c] * (1 if d == "min" else -1) for c, d in directions.items()]].T
    return df[brute_force_front(F, ok)]


def test_plot_front_staircase_vertices_are_the_front_sorted_by_cost():
    df, _ = evaluated()
    ok = np.arange(len(df)) % 5 != 0  # every fifth row is infeasible
    directions = {"top1": "max", "macs": "min"}
    ax = search.plot_front(df, directions, feasible=ok)
    (line,) = ax.lines
    front = _front_points(df, directions, ok).sort_values(["macs", "top1"])
    assert line.get_drawstyle() == "steps-post"
    np.testing.assert_allclose(line.get_xdata(), front["macs"] / 1e6)
    np.testing.assert_allclose(line.get_ydata(), 100 * front["top1"])
    assert ax.get_xlabel() == "MACs (M)" and ax.get_ylabel() == "top-1 accuracy (%)"
    scattered = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(ax.collections) == 2 and len(scattered) == len(df)  # infeasible drawn apart
    np.testing.assert_allclose(np.sort(scattered[:, 1]), np.sort(100 * df["top1"]))


def test_plot_front_labels_latency_params_and_a_maximised_cost():
    df = pd.DataFrame({"latency_ms_pred": [3.0, 2.0, 1.0], "params": [2e6, 1e6, 5e5],
                       "top1": [0.5, 0.7, 0.9]})
    ax = search.plot_front(df, {"top1": "max", "latency_ms_pred": "min"})
    assert ax.get_xlabel() == "predicted latency (ms)" and ax.get_ylabel() == "top-1 accuracy (%)"
    ax = search.plot_front(df, {"params": "max", "latency_ms_pred": "min"}, x="params",
                           y="latency_ms_pred")
    (line,) = ax.lines
    assert ax.get_xlabel() == "params (M)" and line.get_drawstyle() == "steps-pre"
    np.testing.assert_allclose(line.get_xdata(), [0.5, 1.0, 2.0])


def test_plot_front_takes_units_from_table_metadata(tmp_path):
    df, meta = evaluated()
    df = df.rename(columns={"top1": "acc"})
    meta = table_metadata([Objective("acc", lambda a: 0.0, "max", "fraction"),
                           Objective("macs", lambda a: 0.0, "min", "MACs")], "cpu", "x")
    write_table(tmp_path / "t.parquet", df, meta)
    table, _ = read_table(tmp_path / "t.parquet")
    ax = search.plot_front(table, {"acc": "max", "macs": "min"})
    assert ax.get_ylabel() == "acc (%)"  # "acc" is no registered objective: the unit is the file's
    assert ax.lines[0].get_ydata().max() == pytest.approx(100 * df["acc"].max())


def test_plot_front_uses_the_given_axes_and_never_shows_or_saves(monkeypatch):
    from matplotlib.figure import Figure

    def refuse(*args, **kwargs):
        raise AssertionError("plot_front must not show or save")

    monkeypatch.setattr(plt, "show", refuse)
    monkeypatch.setattr(Figure, "savefig", refuse)
    df, _ = evaluated()
    fig, ax = plt.subplots()
    assert search.plot_front(df, {"top1": "max", "macs": "min"}, ax, title="t") is ax
    assert ax.get_title() == "t"


# -- Run.plot -------------------------------------------------------------------------------------
def test_search_run_plots_its_feasible_front(tmp_path):
    df, meta = evaluated()
    run = search_run(tmp_path, df, meta, constraints=["params <= 1600"])
    ax = run.plot()
    ok = df["params"].to_numpy() <= 1600
    front = _front_points(df, {"top1": "max", "macs": "min"}, ok)
    assert len(ax.lines[0].get_xdata()) == len(front) and (~ok).any()
    assert sorted(ax.lines[0].get_xdata()) == pytest.approx(sorted(front["macs"] / 1e6))


def test_train_and_prune_runs_plot_val_accuracy_in_percent(tmp_path):
    with start_run("train", {}, 0, root=tmp_path, name="t") as run:
        for epoch, (small, large) in enumerate([(0.2, 0.3), (0.4, 0.6)], start=1):
            run.log_metrics({"epoch": epoch, "loss_largest": 1.0, "val_acc_smallest": small,
                             "val_acc_largest": large})
    ax = load_run(run.path).plot()
    assert [line.get_label() for line in ax.lines] == ["val_acc_smallest", "val_acc_largest"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [30.0, 60.0])
    assert ax.get_xlabel() == "epoch" and "%" in ax.get_ylabel()
    with start_run("prune", {}, 0, root=tmp_path, name="p") as run:
        for stage, acc in [("dense", 0.9), ("pruned", 0.5), ("finetuned", 0.8)]:
            run.log_metrics({"stage": stage, "val_acc": acc, "sparsity": 0.5})
    ax = load_run(run.path).plot()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [90.0, 50.0, 80.0])


def test_a_run_with_nothing_to_plot_is_a_one_line_run_error(tmp_path):
    with start_run("export", {}, 0, root=tmp_path, name="e"):
        pass
    with pytest.raises(RunError, match="nothing to plot") as err:
        load_run(tmp_path / "e").plot()
    assert "\n" not in str(err.value)


# -- nasbench results / bench ---------------------------------------------------------------------
def test_results_honours_nasbench_results_and_keeps_lines_short(cli, tmp_path, monkeypatch):
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("NASBENCH_RESULTS", str(root))
    monkeypatch.chdir(tmp_path)  # ./results must not be where runs are looked for
    constant = [Objective("top1", lambda a: 0.5, "max", "fraction"),
                Objective("macs", lambda a: 1e6, "min", "MACs")]
    df, meta = evaluated(n=5, space=LONG_SPACE, metrics=(constant, []))
    assert len(df["arch"][0]) > 290
    with start_run("search", {"objectives": ["top1", "macs"]}, 0, name="long") as run:
        write_table(run.path / "evaluations.parquet", df, meta)
        run.log_metrics({"epoch": 1, "val_acc": 0.5})
        wide = pd.DataFrame({f"column_{i}": ["x" * 30] * 3 for i in range(12)})  # ~370 chars a row
        run.write_table("wide", wide)
    assert run.path.parent == root and load_run("long").path == run.path

    listing = cli("results")
    assert listing.code == 0, listing.err
    assert re.search(r"^long\s+search\s+completed", listing.out, re.M)
    shown = cli("results", "long", "--rows", "5")
    assert shown.code == 0, shown.err
    out = shown.out
    assert "evaluations (5 rows)" in out and df["arch_id"][4] in out
    header = out.split("evaluations (5 rows)\n")[1].splitlines()[0].split()
    assert header[0] == "arch_id" and "arch" not in header  # dropped in favour of arch_id
    assert df["arch"][0][:40] not in out and "wide (3 rows)" in out
    for text in (listing.out, out):
        assert max(map(len, text.splitlines())) <= 160
        assert "\x1b[" not in text and not set("─│┃━┏┡") & set(text)  # plain when captured


def test_bench_out_dir_defaults_under_nasbench_results(cli, tmp_path, monkeypatch):
    import nasbench.bench.registry as registry

    seen = {}

    def fake_run(name, opts):
        seen["out_dir"] = opts.out_dir
        return {"figures": {}}, opts.out_dir / f"{name}.json"

    monkeypatch.setenv("NASBENCH_RESULTS", str(tmp_path / "r"))
    monkeypatch.setattr(registry, "run_benchmark", fake_run)
    assert cli("bench", "supernets", "--quick").code == 0
    assert seen["out_dir"] == tmp_path / "r" / "bench"
