"""The shipped built-in tabular benchmark: complete, sane, and consistent with its space."""

from __future__ import annotations

import numpy as np
import pytest

from nasbench.tabular.builtin import OBJECTIVE_DIRECTIONS, load_builtin, table_path
from nasbench.tabular.builtin_space import SPACE, build_model
from nasbench.tabular.generate import RESOLUTION, all_archs
from nasbench_core.errors import UserError

COLUMNS = ["top1", "latency_ms", "macs", "params"]


@pytest.fixture(scope="module")
def bench():
    if not table_path().exists():
        pytest.skip(f"built-in table {table_path()} not generated yet "
                    "(python -m nasbench.tabular.generate)")
    return load_builtin()


def test_table_is_complete_and_sane(bench):
    table = bench.table
    assert len(table) == 216 == SPACE.cardinality
    assert not table[COLUMNS].isna().any().any()
    assert table["top1"].between(0.1, 1.0).all() and table["top1"].max() > 0.9  # fractions
    assert (table["latency_ms"] > 0).all() and (table["latency_ms"] < 100).all()
    assert (table["macs"] > 0).all() and (table["params"] > 0).all()
    assert table_path().stat().st_size < 5e6


def test_arch_ids_match_the_space(bench):
    expected = {SPACE.arch_id(a) for a in all_archs()}
    assert set(bench.table.index) == expected
    for aid, text in zip(bench.table["arch_id"], bench.table["arch"], strict=True):
        assert SPACE.arch_id(SPACE.parse(text)) == aid


def test_query_and_objectives(bench):
    arch = SPACE.largest()
    row = bench.table.loc[SPACE.arch_id(arch)]
    assert bench.query(arch) == {c: float(row[c]) for c in COLUMNS}
    objectives = bench.objectives(["top1", "latency_ms"])
    assert [(o.name, o.direction) for o in objectives] == [("top1", "max"), ("latency_ms", "min")]
    assert [o(arch) for o in objectives] == [row["top1"], row["latency_ms"]]
    assert bench.matrix(COLUMNS).shape == (216, 4)
    assert set(OBJECTIVE_DIRECTIONS) == set(COLUMNS)
    with pytest.raises(UserError, match="no objective 'flops'"):
        bench.objectives(["flops"])


def test_costs_are_exact_for_rebuilt_models(bench):
    from search.costs import count_macs

    archs = [SPACE.smallest(), SPACE.largest(), *(SPACE.sample(s) for s in range(3))]
    for arch in archs:
        model = build_model(arch)
        row = bench.table.loc[SPACE.arch_id(arch)]
        assert int(row["params"]) == sum(p.numel() for p in model.parameters())
        assert int(row["macs"]) == count_macs(model, (1, RESOLUTION, RESOLUTION))
    # Bigger archs cost more: the table is not shuffled against the space.
    small, large = (bench.table.loc[SPACE.arch_id(a)] for a in (SPACE.smallest(), SPACE.largest()))
    assert np.all(small[["macs", "params"]].to_numpy() < large[["macs", "params"]].to_numpy())
