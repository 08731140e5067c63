"""Objectives, the evaluations table, constraints and every optimizer on a toy problem."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import search
from nasbench_core.errors import UserError
from search.evaluations import Evaluator, read_table, with_pareto, write_table
from search.objectives import Objective
from search.problem import SearchProblem, parse_constraint
from supernets.space import SearchSpace

SPACE = SearchSpace({f"b{i}.width": [1, 2, 3, 4] for i in range(6)} | {"depth": [1, 2, 3]})


class Counting:
    """A deterministic toy objective that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, arch):
        self.calls += 1
        return self.fn(SPACE.features(arch))


def toy_objectives():
    size = Counting(lambda f: float(f.sum()))
    acc = Counting(lambda f: float(1 - np.exp(-1.5 * f[:3].sum() - 0.5 * f[3:].sum())))
    return [Objective("top1", acc, "max", "fraction"),
            Objective("macs", size, "min", "MACs")], (acc, size)


def make_problem(budget=40, constraints=(), table=None, seed=0):
    objs, counters = toy_objectives()
    ev = Evaluator(SPACE, objs, table=table, seed=seed, budget=budget)
    cons = [parse_constraint(c, [o.name for o in objs]) for c in constraints]
    return SearchProblem(ev, cons), counters


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "agemoea" else n  # numba JIT: ~20 s
    for n in search.list_optimizers()
])
def test_every_optimizer_spends_exactly_the_budget(name: str, tmp_path) -> None:
    kwargs = ({"inner_generations": 5, "inner_pop_size": 20, "regressors": ["ridge"]}
              if name == "linas" else {})
    opt = search.create_optimizer(name, **kwargs)
    problem, (acc, size) = make_problem(budget=20)
    opt.run(problem, seed=1, workdir=tmp_path)
    df = problem.evaluator.df
    assert len(df) == 20 and df["arch_id"].is_unique
    assert acc.calls == size.calls == 20  # one true evaluation per row, none repeated


TINY = SearchSpace({"a": [1, 2], "b": [1, 2, 3]})  # 6 archs


@pytest.mark.parametrize("name", [n for n in search.list_optimizers() if n != "agemoea"])
def test_every_optimizer_stops_on_an_exhausted_space(name: str, tmp_path) -> None:
    objs = [Objective("top1", lambda a: float(a["a"]), "max", "fraction"),
            Objective("macs", lambda a: float(a["b"]), "min", "MACs")]
    ev = Evaluator(TINY, objs, budget=50)
    kwargs = ({"inner_generations": 2, "inner_pop_size": 6, "regressors": ["ridge"],
               "pop_size": 4} if name == "linas" else {})
    search.create_optimizer(name, max_stall=3, **kwargs).run(SearchProblem(ev), seed=0,
                                                            workdir=tmp_path)
    assert len(ev.df) <= 6 and ev.df["arch_id"].is_unique


def test_max_stall_is_a_validated_setting() -> None:
    assert search.create_optimizer("optuna", max_stall=7).max_stall == 7
    with pytest.raises(UserError, match="no setting 'stall'"):
        search.create_optimizer("random", stall=7)
    with pytest.raises(UserError, match="max_stall=0: Input should be greater than or equal to 1"):
        search.create_optimizer("nsga2", max_stall=0)


def test_same_seed_same_table() -> None:
    a, _ = make_problem(budget=25)
    b, _ = make_problem(budget=25)
    search.create_optimizer("nsga2").run(a, seed=3)
    search.create_optimizer("nsga2").run(b, seed=3)
    assert a.evaluator.df["arch_id"].tolist() == b.evaluator.df["arch_id"].tolist()


def test_resume_never_reevaluates_and_extends_to_new_budget(tmp_path) -> None:
    first, _ = make_problem(budget=20)
    search.create_optimizer("nsga2").run(first, seed=0)
    write_table(tmp_path / "ev.parquet", first.evaluator.df, first.evaluator.metadata())
    table, meta = read_table(tmp_path / "ev.parquet")
    second, (acc, _) = make_problem(budget=15, table=table)
    search.create_optimizer("nsga2").run(second, seed=0)
    df = second.evaluator.df
    assert len(df) == 35 and df["arch_id"].is_unique and acc.calls == 15
    assert df["arch_id"].head(20).tolist() == table["arch_id"].tolist()
    assert meta["directions"] == {"top1": "max", "macs": "min"}


def test_optuna_study_resumes_from_its_journal(tmp_path) -> None:
    first, _ = make_problem(budget=10)
    search.create_optimizer("optuna_nsga2").run(first, seed=0, workdir=tmp_path)
    second, (acc, _) = make_problem(budget=10, table=first.evaluator.df)
    search.create_optimizer("optuna_nsga2").run(second, seed=0, workdir=tmp_path)
    import optuna

    study = optuna.load_study(study_name="nasbench-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))))
    assert len(study.trials) >= 20 and len(second.evaluator.df) == 20 and acc.calls == 10


def test_evaluator_caches_by_arch_id_and_counts_budget() -> None:
    problem, (acc, _) = make_problem(budget=2)
    ev = problem.evaluator
    a, b, c = SPACE.smallest(), SPACE.largest(), SPACE.sample(5)
    rows = ev.evaluate([a, a, b])
    assert acc.calls == 2 and ev.n_new == 2 and len(rows) == 3
    assert rows["macs"].tolist() == [0.0, 0.0, 7.0]
    with pytest.raises(search.evaluations.BudgetExhausted):
        ev.evaluate([c])
    assert len(ev.df) == 2


def test_table_schema_and_parquet_metadata(tmp_path) -> None:
    problem, _ = make_problem(budget=5)
    search.create_optimizer("random").run(problem, seed=0)
    ev = problem.evaluator
    assert list(ev.df.columns) == ["arch_id", "arch", "top1", "macs", "source", "device", "seed",
                                   "generation", "timestamp"]
    path = tmp_path / "evaluations.parquet"
    write_table(path, with_pareto(ev.df, ev.directions), ev.metadata())
    df, meta = read_table(path)
    assert "is_pareto" not in df.columns  # computed on read, never stored as truth
    assert meta == {"objectives": ["top1", "macs"], "directions": {"top1": "max", "macs": "min"},
                    "units": {"top1": "fraction", "macs": "MACs"},
                    "sources": {"top1": "measured", "macs": "measured"},
                    "device": "cpu", "space_fingerprint": SPACE.fingerprint(), "arch_ids": "canonical"}
    assert SPACE.parse(df["arch"][0]) and df["source"].unique().tolist() == ["measured"]


def test_resumed_table_must_match_space_and_device() -> None:
    from search.evaluations import check_compatible

    meta = {"space_fingerprint": SPACE.fingerprint(), "device": "cpu:X|torch-eager|batch=1",
            "arch_ids": "canonical"}
    check_compatible(meta, space_fingerprint=SPACE.fingerprint(), device=meta["device"])
    with pytest.raises(UserError, match=re.escape("measured on device 'cpu:X|torch-eager|batch=1'")):
        check_compatible(meta, space_fingerprint=SPACE.fingerprint(), device="cuda:Y")
    with pytest.raises(UserError, match="from search space"):
        check_compatible(meta, space_fingerprint="000000000000", device=meta["device"])
    with pytest.raises(UserError, match="predates canonical arch ids"):
        check_compatible({**meta, "arch_ids": None}, space_fingerprint=SPACE.fingerprint(),
                         device=meta["device"])
    meta["directions"] = {"top1": "max", "macs": "min"}
    with pytest.raises(UserError, match="this search measures"):
        check_compatible(meta, space_fingerprint=SPACE.fingerprint(), device=meta["device"],
                         metrics=["top1", "latency_ms"])


def test_unmeasured_values_are_nan_not_zero() -> None:
    table = pd.DataFrame({"arch_id": [SPACE.arch_id(SPACE.smallest())],
                          "arch": [SPACE.canonical_json(SPACE.smallest())], "top1": [0.5],
                          "source": ["measured"], "device": ["cpu"], "seed": [0],
                          "generation": [0], "timestamp": [0.0]})
    ev = Evaluator(SPACE, toy_objectives()[0], table=table)
    assert np.isnan(ev.df["macs"][0])


@pytest.mark.parametrize("name", ["nsga2", "optuna_nsga2", "linas"])
def test_constraints_steer_search_to_feasible_archs(name: str) -> None:
    kwargs = ({"inner_generations": 5, "inner_pop_size": 20, "regressors": ["ridge"]}
              if name == "linas" else {})
    problem, _ = make_problem(budget=60, constraints=["macs <= 2.5"])
    search.create_optimizer(name, **kwargs).run(problem, seed=0)
    df = problem.evaluator.df
    feasible = search.feasible_mask(df, problem.constraints)
    assert feasible[-20:].mean() > feasible[:20].mean() or feasible[:20].all()


@pytest.mark.parametrize(("text", "expected"), [
    ("latency_ms <= 5", ("latency_ms", "<=", 5.0)),
    ("params<=2e6", ("params", "<=", 2e6)),
    ("top1 > .75", ("top1", ">", 0.75)),
])
def test_parse_constraint(text, expected) -> None:
    c = parse_constraint(text)
    assert (c.column, c.op, c.value) == expected


def test_constraint_errors_are_one_line_user_errors() -> None:
    with pytest.raises(UserError, match="unknown column 'latency_ms'"):
        parse_constraint("latency_ms <= 5", ["top1", "macs"])
    with pytest.raises(UserError, match="not of the form"):
        parse_constraint("__import__('os').system('x') <= 1")
    with pytest.raises(UserError, match="not of the form"):
        parse_constraint("macs == 3")


def test_constraint_violation_and_nan() -> None:
    c = parse_constraint("params <= 10")
    assert c.violation(np.array([5.0, 12.0, np.nan])).tolist() == [-5.0, 2.0, np.inf]
    assert c.satisfied(np.array([10.0, np.nan])).tolist() == [True, False]


def test_unknown_optimizer_objective_and_setting() -> None:
    with pytest.raises(UserError, match="unknown optimizer 'nsga9'"):
        search.create_optimizer("nsga9")
    with pytest.raises(UserError, match="no setting 'popsize'"):
        search.create_optimizer("nsga2", popsize=3)
    with pytest.raises(UserError, match="unknown objective 'acc'"):
        search.make_objectives(["acc"], search.ObjectiveContext())


def test_pareto_rows() -> None:
    problem, _ = make_problem(budget=30)
    search.create_optimizer("random").run(problem, seed=0)
    front = problem.evaluator.pareto()
    assert front["is_pareto"].all()
    assert len(front) == search.pareto_mask(problem.evaluator.df, problem.directions).sum()


def test_linas_vectorised_one_hot_matches_space() -> None:
    from search.optimizers.linas import one_hot_rows

    archs = [SPACE.sample(i) for i in range(8)]
    X = np.stack([SPACE.encode(a) for a in archs])
    assert (one_hot_rows(SPACE, X) == np.stack([SPACE.one_hot(a) for a in archs])).all()


@pytest.mark.parametrize("name", ["nsga3", pytest.param("agemoea", marks=pytest.mark.slow)])
def test_many_objective_optimizers_on_three_objectives(name: str) -> None:
    objs, _ = toy_objectives()
    depth = Objective("params", lambda a: float(a["depth"] * a["b0.width"]), "min", "count")
    ev = Evaluator(SPACE, [*objs, depth], budget=24)
    search.create_optimizer(name, pop_size=12).run(SearchProblem(ev), seed=0)
    assert len(ev.df) == 24 and ev.df["arch_id"].is_unique
    assert ev.pareto()["is_pareto"].all()


def test_a_batch_is_timed_together_and_each_rows_latency_details_are_kept(monkeypatch):
    """The serial backend hands a latency metric the whole batch (interleaved rounds), then
    stores each arch's IQR, re-timing count and noisy flag next to its median."""
    from search.evaluations import Evaluator
    from search.objectives import Objective
    from supernets.space import SearchSpace

    space = SearchSpace({"x": [1, 2, 3, 4]})
    batches = []

    class Timed:
        def measure_many(self, archs):
            batches.append([a["x"] for a in archs])

        def __call__(self, arch):
            return float(arch["x"])

        def details(self, arch):
            return {"latency_ms_iqr": arch["x"] / 10, "latency_ms_retimed": 0, "latency_ms_noisy": False}

    ev = Evaluator(space, [Objective("latency_ms@cpu", Timed(), "min")])
    ev.evaluate([{"x": 1}, {"x": 3}])
    assert batches == [[1, 3]]
    df = ev.df
    assert df["latency_ms@cpu_iqr"].tolist() == [0.1, 0.3]
    assert df["latency_ms@cpu_noisy"].tolist() == [0.0, 0.0]
