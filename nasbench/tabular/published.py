"""NAS-Bench-201 and NATS-Bench through their official APIs, on the user's downloaded files.

Each is exposed as a SearchSpace plus objectives (accuracy, FLOPs, params, latency), so every
optimizer runs on it unchanged. Files are read safely (see `safe_load`) and handed to the
official API as dicts, so nothing in them is executed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from nasbench.tabular.safe_load import load_plain_pickle, load_torch_plain
from nasbench_core.errors import UserError
from supernets.space import SearchSpace

# ordered cheap -> expensive, so smallest() and largest() mean what they say
TOPOLOGY_OPS = ("none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
TOPOLOGY_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
TOPOLOGY_SPACE = SearchSpace({f"edge{node}<-{src}": TOPOLOGY_OPS for node, src in TOPOLOGY_EDGES})
SIZE_CHANNELS = (8, 16, 24, 32, 40, 48, 56, 64)
SIZE_SPACE = SearchSpace({f"layer{i}.channels": SIZE_CHANNELS for i in range(1, 6)})
DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
VALIDATED_ON = ("cifar10", "cifar10-valid")
"""Real cifar10 results hold only the test split (D-X-Y/NATS-Bench #27, #39): as in the
benchmark papers, `top1` of `cifar10` is the validation accuracy of `cifar10-valid` (trained on
half the train set, validated on the other half); `test_top1` stays cifar10's own test."""
OBJECTIVES = {  # name -> (direction, unit)
    "top1": ("max", "%"),
    "test_top1": ("max", "%"),
    "mflops": ("min", "MFLOPs"),
    "params_m": ("min", "M params"),
    "latency_ms": ("min", "ms"),
}


def topology_string(arch: Mapping[str, Any]) -> str:
    """The official cell string, e.g. |nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|."""
    arch = TOPOLOGY_SPACE.validate(arch)
    nodes = []
    for node in (1, 2, 3):
        ops = [f"{arch[f'edge{node}<-{src}']}~{src}" for src in range(node)]
        nodes.append("|" + "|".join(ops) + "|")
    return "+".join(nodes)


def size_string(arch: Mapping[str, Any]) -> str:
    arch = SIZE_SPACE.validate(arch)
    return ":".join(str(arch[f"layer{i}.channels"]) for i in range(1, 6))


@dataclass
class PublishedBenchmark:
    """A published benchmark opened through its official API object."""

    name: str
    space: SearchSpace
    api: Any
    dataset: str
    hp: str
    to_string: Callable[[Mapping[str, Any]], str]

    def _index(self, arch: Mapping[str, Any]) -> int:
        index = self.api.query_index_by_arch(self.to_string(arch))
        if index < 0:
            raise UserError(f"{self.name}: arch {self.to_string(arch)} is not in the benchmark file")
        return index

    def curve(self, arch: Mapping[str, Any]) -> list[float]:
        """The validation accuracy after every training epoch (of the split `top1` is read
        from), for learning-curve early stopping; one line when the file has no curve."""
        index = self._index(arch)
        dataset = VALIDATED_ON[1] if self.dataset == VALIDATED_ON[0] else self.dataset
        try:
            epochs = self.api.arch2infos_dict[index][self.hp].get_total_epoch(dataset)
            return [float(self.api.get_more_info(index, dataset, iepoch=e, hp=self.hp,
                                                 is_random=False)["valid-accuracy"])
                    for e in range(epochs)]
        except (AttributeError, KeyError, ValueError):
            raise UserError(f"{self.name}: the file has no per-epoch validation accuracy for arch "
                            f"{self.to_string(arch)} on {dataset!r}") from None

    def query(self, arch: Mapping[str, Any]) -> dict[str, float]:
        index = self._index(arch)
        info = self.api.get_more_info(index, self.dataset, hp=self.hp, is_random=False)
        cost = self.api.get_cost_info(index, self.dataset, hp=self.hp)
        latency = cost.get("latency")
        valid = info
        if self.dataset == VALIDATED_ON[0]:  # its files have no validation accuracy
            try:
                valid = self.api.get_more_info(index, VALIDATED_ON[1], hp=self.hp, is_random=False)
            except KeyError:
                valid = {}
        if "valid-accuracy" not in valid:
            where = " (cifar10's comes from cifar10-valid)" if self.dataset == VALIDATED_ON[0] else ""
            raise UserError(f"{self.name}: the file has no validation accuracy for arch "
                            f"{self.to_string(arch)} on {self.dataset!r}{where}")
        return {
            "top1": float(valid["valid-accuracy"]),
            "test_top1": float(info.get("test-accuracy", float("nan"))),
            "mflops": float(cost["flops"]),
            "params_m": float(cost["params"]),
            "latency_ms": float(latency) * 1000.0 if latency is not None and latency > 0 else float("nan"),
        }

    def tabulate(self, *, curves: bool = False) -> Any:
        """Every arch of the space queried once, as a `TabularBenchmark` (top1, test_top1,
        latency_ms, params; with `curves`, `top1_curve` too): what exhaustive comparisons
        (`bench optimizers`, `bench early_stopping`) need. A file that lacks an arch is one line
        naming it."""
        import itertools

        import pandas as pd

        from nasbench.tabular.builtin import TabularBenchmark

        rows = []
        names = [d.name for d in self.space.dims]
        for values in itertools.product(*(d.choices for d in self.space.dims)):
            arch = self.space.canonical(dict(zip(names, values, strict=True)))
            got = self.query(arch)
            rows.append({"arch_id": self.space.arch_id(arch), "arch": self.space.canonical_json(arch),
                         "top1": got["top1"], "test_top1": got["test_top1"],
                         "latency_ms": got["latency_ms"], "params": got["params_m"] * 1e6,
                         **({"top1_curve": self.curve(arch)} if curves else {})})
        table = pd.DataFrame(rows).drop_duplicates("arch_id").set_index("arch_id", drop=False)
        return TabularBenchmark(f"{self.name}-{self.dataset}", self.space, table,
                                {"dataset": self.dataset, "hp": self.hp})

    def objectives(self, names: list[str]) -> list[Any]:
        from search.objectives import Objective

        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown:
            raise UserError(f"{self.name} has no objective {unknown[0]!r}; it has: {', '.join(OBJECTIVES)}")
        return [Objective(n, lambda arch, n=n: self.query(arch)[n], OBJECTIVES[n][0], unit=OBJECTIVES[n][1])
                for n in names]


def _check(path: str | Path, dataset: str, hp: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"benchmark file not found: {path} (download it from the benchmark's official page "
                        "and pass its path)")
    if dataset not in DATASETS:
        raise UserError(f"dataset {dataset!r} is not in the benchmark; expected one of {', '.join(DATASETS)}")
    if hp not in ("12", "200", "01", "90"):
        raise UserError(f"hp {hp!r}: expected the training schedule '12' or '200' ('01'/'90' for NATS sss)")
    return path


def open_nasbench201(path: str | Path, dataset: str = "cifar10", hp: str = "200") -> PublishedBenchmark:
    """NAS-Bench-201 from its `.pth` file (e.g. NAS-Bench-201-v1_1-096897.pth)."""
    from nas_201_api import NASBench201API

    path = _check(path, dataset, hp)
    data = load_torch_plain(path)
    try:
        api = NASBench201API(data, verbose=False)
    except (AssertionError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a NAS-Bench-201 file ({type(exc).__name__}: {exc})") from None
    return PublishedBenchmark("nas-bench-201", TOPOLOGY_SPACE, api, dataset, hp, topology_string)


@contextlib.contextmanager
def _safe_nats_loading() -> Iterator[None]:
    """The NATS API reads pickles itself: the archive and meta file from `api_topology` and
    `api_size`, and in fast mode each arch's `NNNNNN.pickle.pbz2` from `api_utils` (`reload`).
    Route every one of those reads through our loader."""
    from nats_bench import api_size, api_topology, api_utils

    with mock.patch.object(api_topology, "pickle_load", load_plain_pickle), \
            mock.patch.object(api_size, "pickle_load", load_plain_pickle), \
            mock.patch.object(api_utils, "pickle_load", load_plain_pickle):
        yield


def open_natsbench(path: str | Path, search_space: str = "tss", dataset: str = "cifar10",
                   hp: str = "200") -> PublishedBenchmark:
    """NATS-Bench from a `.pickle.pbz2` archive or its fast-mode directory (tss: topology, sss: size)."""
    import nats_bench

    if search_space not in ("tss", "sss"):
        raise UserError(f"NATS-Bench search_space {search_space!r}: expected 'tss' or 'sss'")
    path = _check(path, dataset, hp)
    with _safe_nats_loading():
        source: Any = str(path) if path.is_dir() else load_plain_pickle(path)
        try:
            api = nats_bench.create(source, search_space, fast_mode=path.is_dir(), verbose=False)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is not a NATS-Bench {search_space} archive ({type(exc).__name__}: {exc})") \
                from None
    if search_space == "tss":
        return PublishedBenchmark("nats-tss", TOPOLOGY_SPACE, _Loading(api), dataset, hp, topology_string)
    return PublishedBenchmark("nats-sss", SIZE_SPACE, _Loading(api), dataset, hp, size_string)


class _Loading:
    """Keep the safe loader in place for the API's lazy per-arch reads."""

    def __init__(self, api: Any):
        self._api = api

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._api, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with _safe_nats_loading():
                return attr(*args, **kwargs)

        return call
