"""NAS-Bench-201 / NATS-Bench adapters on small files written in the official formats.

The real files are gigabytes and cannot be downloaded here; these fixtures are made with the
official API's own classes, so the adapter reads exactly the structures the real files hold.
"""

from __future__ import annotations

import bz2
import collections
import pickle

import pytest
import torch

from nasbench.tabular.published import (
    TOPOLOGY_SPACE,
    open_nasbench201,
    open_natsbench,
    topology_string,
)
from nasbench_core.errors import UserError

nas_201_api = pytest.importorskip("nas_201_api")


EVAL_SETS = {  # what the real NAS-Bench-201 files hold per dataset (no x-valid for cifar10)
    "cifar10-valid": ("x-valid", "ori-test"),
    "cifar10": ("ori-test",),
}


def _results(arch_str: str, index: int, epochs: int, acc: float):
    """One arch's results for cifar10-valid (trained on half the train set; valid = the other
    half) and cifar10 (trained on all of it; test only), as the official files store them."""
    from nas_201_api.api_utils import ArchResults, ResultsCount

    result = ArchResults(index, arch_str)
    for dataset, names in EVAL_SETS.items():
        base = acc if dataset == "cifar10-valid" else acc + 3
        rc = ResultsCount(dataset, None, {e: base - 5 + e for e in range(epochs)},
                          {e: 1.0 for e in range(epochs)}, params=0.1 * (index + 1),
                          flop=10.0 * (index + 1), arch_config={"arch_str": arch_str}, seed=777,
                          epochs=epochs, latency=[0.002 * (index + 1)])
        rc.update_eval({f"{n}@{e}": base + (1 if n == "ori-test" else 0) - (epochs - 1 - e) / 4
                        for n in names for e in range(epochs)},  # a rising learning curve
                       {f"{n}@{e}": 0.5 for n in names for e in range(epochs)},
                       {f"{n}@{e}": 1.0 for n in names for e in range(epochs)})
        result.update(dataset, 777, rc)
    return result.state_dict()


def _archs():
    return [TOPOLOGY_SPACE.smallest(), TOPOLOGY_SPACE.largest(), TOPOLOGY_SPACE.sample(3)]


def _nb201_dict():
    archs = [topology_string(a) for a in _archs()]
    infos = {i: {"less": _results(s, i, 12, 60.0 + i), "full": _results(s, i, 20, 80.0 + i)}
             for i, s in enumerate(archs)}
    return {"meta_archs": archs, "arch2infos": infos, "evaluated_indexes": list(range(len(archs)))}


def test_nasbench201_queries_through_official_api(tmp_path):
    path = tmp_path / "NAS-Bench-201-tiny.pth"
    torch.save(_nb201_dict(), path)
    bench = open_nasbench201(path, dataset="cifar10", hp="200")
    assert bench.space == TOPOLOGY_SPACE and len(bench.space) == 6
    largest = bench.query(TOPOLOGY_SPACE.largest())
    # cifar10 has no validation split: top1 is cifar10-valid's x-valid accuracy (the protocol
    # of the NAS-Bench-201 paper), test_top1 the ori-test accuracy of the full-train model.
    assert largest["top1"] == pytest.approx(81.0) and largest["test_top1"] == pytest.approx(85.0)
    assert largest["mflops"] == pytest.approx(20.0) and largest["latency_ms"] == pytest.approx(4.0)
    top1, lat = bench.objectives(["top1", "latency_ms"])
    assert (top1.direction, lat.direction) == ("max", "min")
    assert top1(TOPOLOGY_SPACE.smallest()) == pytest.approx(80.0)
    valid = open_nasbench201(path, dataset="cifar10-valid", hp="200").query(TOPOLOGY_SPACE.largest())
    assert valid["top1"] == pytest.approx(81.0) and valid["test_top1"] == pytest.approx(82.0)
    with pytest.raises(UserError, match="not in the benchmark file"):
        bench.query(TOPOLOGY_SPACE.sample(99))
    with pytest.raises(UserError, match="no objective 'energy'"):
        bench.objectives(["energy"])


def test_learning_curves_are_the_validation_split_per_epoch_and_end_at_top1(tmp_path):
    path = tmp_path / "NAS-Bench-201-tiny.pth"
    torch.save(_nb201_dict(), path)
    bench = open_nasbench201(path, dataset="cifar10", hp="200")
    arch = TOPOLOGY_SPACE.largest()
    curve = bench.curve(arch)  # cifar10's comes from cifar10-valid's x-valid, 20 epochs here
    assert curve == pytest.approx([81.0 - (19 - e) / 4 for e in range(20)])
    assert curve[-1] == pytest.approx(bench.query(arch)["top1"])
    short = open_nasbench201(path, dataset="cifar10-valid", hp="12").curve(arch)
    assert short == pytest.approx([61.0 - (11 - e) / 4 for e in range(12)])


def test_a_file_without_any_validation_split_is_one_line_not_nan(tmp_path, monkeypatch):
    monkeypatch.delitem(EVAL_SETS, "cifar10-valid")
    path = tmp_path / "NAS-Bench-201-test-only.pth"
    torch.save(_nb201_dict(), path)
    with pytest.raises(UserError, match="no validation accuracy .* on 'cifar10' "
                                        r"\(cifar10's comes from cifar10-valid\)"):
        open_nasbench201(path, dataset="cifar10").query(TOPOLOGY_SPACE.largest())


def test_topology_string_matches_official_format():
    arch = dict.fromkeys(TOPOLOGY_SPACE.names, "nor_conv_3x3")
    arch["edge2<-1"] = "skip_connect"
    assert topology_string(arch) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    )


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_files_with_code_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"meta_archs": [Evil()]}, evil)
    with pytest.raises(UserError, match="not a plain-data torch file"):
        open_nasbench201(evil)
    pbz2 = tmp_path / "NATS-evil.pickle.pbz2"
    pbz2.write_bytes(bz2.compress(pickle.dumps({"x": Evil()})))
    with pytest.raises(UserError, match="refusing to unpickle builtins.print"):
        open_natsbench(pbz2)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(UserError, match="benchmark file not found"):
        open_nasbench201(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    torch.save(_nb201_dict(), tmp_path / "nb.pth")
    with pytest.raises(UserError, match="dataset 'svhn'"):
        open_nasbench201(tmp_path / "nb.pth", dataset="svhn")
    with pytest.raises(UserError, match="search_space 'xyz'"):
        open_natsbench(tmp_path / "nb.pth", search_space="xyz")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a plain-data torch file"):
        open_nasbench201(tmp_path / "junk.pth")


def _nats_results(arch_str: str, index: int, epochs: int, acc: float):
    from nats_bench.api_utils import ArchResults, ResultsCount

    result = ArchResults(index, arch_str)
    for dataset, names in EVAL_SETS.items():
        rc = ResultsCount(dataset, None, {e: acc for e in range(epochs)}, {e: 1.0 for e in range(epochs)},
                          params=0.1 * (index + 1), flop=10.0 * (index + 1), arch_config={"arch_str": arch_str},
                          seed=777, epochs=epochs, latency=[0.001])
        rc.update_train_info({e: acc for e in range(epochs)}, {e: acc for e in range(epochs)},
                             {e: 1.0 for e in range(epochs)}, {e: 2.0 for e in range(epochs)})
        rc.update_eval({f"{n}@{e}": acc for n in names for e in range(epochs)},
                       {f"{n}@{e}": 0.5 for n in names for e in range(epochs)},
                       {f"{n}@{e}": 1.0 for n in names for e in range(epochs)})
        result.update(dataset, 777, rc)
    return result.state_dict()


@pytest.mark.parametrize("space_name", ["tss", "sss"])
def test_natsbench_single_file(tmp_path, space_name):
    pytest.importorskip("nats_bench")
    from nasbench.tabular.published import SIZE_SPACE, size_string

    space, to_str = (TOPOLOGY_SPACE, topology_string) if space_name == "tss" else (SIZE_SPACE, size_string)
    archs = [space.smallest(), space.largest()]
    strings = [to_str(a) for a in archs]
    hp = "200" if space_name == "tss" else "90"
    data = {"meta_archs": strings, "evaluated_indexes": [0, 1],
            "arch2infos": {i: {hp: _nats_results(s, i, 5, 70.0 + i)} for i, s in enumerate(strings)}}
    path = tmp_path / f"NATS-{space_name}-tiny.pickle.pbz2"
    path.write_bytes(bz2.compress(pickle.dumps(data)))
    bench = open_natsbench(path, search_space=space_name, dataset="cifar10", hp=hp)
    assert bench.space == space
    assert bench.query(archs[1])["top1"] == pytest.approx(71.0)
    assert bench.query(archs[0])["mflops"] == pytest.approx(10.0)


class _EveryArchAPI:
    """The three NAS-Bench-201 API calls the adapter makes, answered for every arch of the
    space (a real file holds all 15,625; a fixture that big would take minutes to write)."""

    EPOCHS = 5

    def __init__(self):
        self.index = {}
        self.arch2infos_dict = collections.defaultdict(lambda: {"200": self})

    def get_total_epoch(self, dataset):  # what ArchResults answers
        return self.EPOCHS

    def query_index_by_arch(self, text):
        return self.index.setdefault(text, len(self.index))

    def get_more_info(self, index, dataset, hp, is_random, iepoch=None):
        late = self.EPOCHS - 1 - (self.EPOCHS - 1 if iepoch is None else iepoch)
        return {"valid-accuracy": 50.0 + (index * 7919) % 500 / 10 - late, "test-accuracy": 40.0}

    def get_cost_info(self, index, dataset, hp):
        return {"flops": 1.0, "params": 0.001 * (index % 97 + 1), "latency": 0.001 * (index % 89 + 1)}


def _every_arch_bench():
    from nasbench.tabular.published import PublishedBenchmark

    return PublishedBenchmark("nas-bench-201", TOPOLOGY_SPACE, _EveryArchAPI(), "cifar100", "200",
                              topology_string)


def test_tabulate_queries_every_arch_once_and_keeps_its_values():
    bench = _every_arch_bench()
    table = bench.tabulate()
    assert len(table.table) == 5 ** 6 and table.table["arch_id"].is_unique
    arch = TOPOLOGY_SPACE.sample(7)
    row = table.table.loc[TOPOLOGY_SPACE.arch_id(arch)]
    got = bench.query(arch)
    assert (row["top1"], row["latency_ms"], row["params"]) == (got["top1"], got["latency_ms"],
                                                              got["params_m"] * 1e6)


def test_tabulating_a_file_that_lacks_archs_is_one_line(tmp_path):
    path = tmp_path / "NAS-Bench-201-tiny.pth"
    torch.save(_nb201_dict(), path)
    with pytest.raises(UserError, match="is not in the benchmark file"):
        open_nasbench201(path, dataset="cifar10").tabulate()


def test_bench_optimizers_runs_the_nb201_problems_on_the_users_file(tmp_path, monkeypatch):
    import nasbench.bench.optimizers as bench_optimizers
    from nasbench.bench.registry import BenchOptions, run_benchmark

    tabulated = _every_arch_bench().tabulate()
    opened = []
    monkeypatch.setattr(bench_optimizers, "_nb201",
                        lambda path, dataset: opened.append((path, dataset)) or tabulated)
    report, _ = run_benchmark("optimizers", BenchOptions(out_dir=tmp_path, params={
        "problems": ["nb201-cifar100"], "nb201": "/data/NAS-Bench-201.pth", "budgets": [10],
        "seeds": 1, "optimizers": ["random", "nsga2"]}))
    figures = report["figures"]
    assert opened == [("/data/NAS-Bench-201.pth", "cifar100")]
    assert figures["nb201"]["nb201-cifar100"] == 5 ** 6
    result = figures["problems"]["nb201-cifar100"]
    assert set(result["optimizers"]) == {"random", "nsga2"}
    assert 0 < result["optimizers"]["nsga2"]["hv@10"]["mean"] <= 1
    with pytest.raises(UserError, match="problem nb201-cifar10 needs nb201=PATH"):
        run_benchmark("optimizers", BenchOptions(out_dir=tmp_path, params={"problems": ["nb201-cifar10"]}))


def test_tabulate_with_curves_keeps_each_archs_curve_ending_at_its_top1():
    table = _every_arch_bench().tabulate(curves=True).table
    curves = table["top1_curve"]
    assert curves.map(len).eq(5).all()
    assert (curves.map(lambda c: c[-1]) == table["top1"]).all()
    assert (curves.map(lambda c: c[-1] - c[0]) == 4.0).all()


def test_a_file_without_learning_curves_is_one_line():
    from nasbench.tabular.published import PublishedBenchmark

    api = _EveryArchAPI()
    del api.arch2infos_dict
    bench = PublishedBenchmark("nas-bench-201", TOPOLOGY_SPACE, api, "cifar100", "200", topology_string)
    with pytest.raises(UserError, match="no per-epoch validation accuracy for arch .* on 'cifar100'"):
        bench.curve(TOPOLOGY_SPACE.largest())


def test_bench_early_stopping_runs_on_nasbench201_curves(tmp_path, monkeypatch):
    import nasbench.tabular.published as published
    from nasbench.bench.registry import BenchOptions, run_benchmark

    opened = []
    monkeypatch.setattr(published, "open_nasbench201",
                        lambda path, dataset: opened.append((path, dataset)) or _every_arch_bench())
    report, _ = run_benchmark("early_stopping", BenchOptions(quick=True, out_dir=tmp_path, params={
        "problem": "nb201-cifar100", "nb201": "/data/NAS-Bench-201.pth", "min_epochs": 2}))
    figures = report["figures"]
    assert opened == [("/data/NAS-Bench-201.pth", "cifar100")]
    assert figures["table"] == {"path": "/data/NAS-Bench-201.pth", "archs": 5 ** 6, "horizon": 5}
    assert figures["no_stopping"]["epochs"]["per_seed"] == [30 * 5]
    with pytest.raises(UserError, match="problem nb201-cifar10 needs nb201=PATH"):
        run_benchmark("early_stopping", BenchOptions(out_dir=tmp_path, params={"problem": "nb201-cifar10"}))
