"""Hostile and careless input (issue 19): each case is one line on stderr, exit 2, no traceback
and no new file, whatever the command. Plus the secrets, SIGTERM and `submit` guarantees."""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nasbench.config import yaml_bounds

ROOT = Path(__file__).resolve().parents[1]
BIG = 2**64 + 1
LONG_INT = "9" * 5000  # past Python's 4300-digit int-string limit


def _bomb(levels: int = 7, fanout: int = 9) -> str:
    """The issue's alias bomb: each level repeats the previous one `fanout` times."""
    lines = [f"  l0: &l0 [{', '.join(['x'] * fanout)}]"]
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def _flow_bomb() -> str:
    """A bomb small enough for one `--set` value: 6 levels of 10."""
    inner = "[&a0 [1,1,1,1,1,1,1,1,1,1]"
    for level in range(1, 6):
        inner += f", &a{level} [{','.join([f'*a{level - 1}'] * 10)}]"
    return inner + "]"


def _alias_chain(length: int) -> str:
    """Nesting built from aliases, one level each: shallow as written, deep expanded."""
    lines = ["c0: &c0 [x]"] + [f"c{i}: &c{i} [*c{i - 1}]" for i in range(1, length)]
    return "\n".join(lines) + "\n"


def _fake_run(path: Path, command: str, config: str | None = "run: {seed: 0}\n") -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"command": command, "status": "failed",
                                                    "config": {}}))
    if config is not None:
        (path / "config.yaml").write_text(config)
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# Each case: command-line arguments (`{tmp}` is the case's folder), files to create first (name ->
# text, bytes or a function of the folder), and a fragment the one error line must contain.
Files = dict[str, "str | bytes | Callable[[Path], object]"]
CASES: list[tuple[str, list[str], Files, str]] = [
    # -- hostile and malformed YAML -------------------------------------------------------
    ("alias-bomb-latency", ["search", "c.yaml"], {"c.yaml": "latency:\n" + _bomb()},
     "expands to more than 100000 nodes"),
    ("alias-bomb-train", ["train", "c.yaml"], {"c.yaml": "train:\n" + _bomb(6, 10)},
     "expands to more than 100000 nodes"),
    ("alias-bomb-set", ["train", "--set", f"train.x={_flow_bomb()}"], {},
     "--set train.x: YAML expands to more than 100000 nodes"),
    ("recursive-alias", ["train", "c.yaml"], {"c.yaml": "train: &a {x: *a}\n"},
     "an alias refers to the node that contains it"),
    ("deep-flow", ["train", "c.yaml"], {"c.yaml": "train: {x: " + "[" * 5000 + "]" * 5000 + "}\n"},
     "nested deeper than 32 levels"),
    ("deep-block", ["prune", "c.yaml"],
     {"c.yaml": "".join(f"{'  ' * i}k{i}:\n" for i in range(40)) + "  " * 40 + "v\n"},
     "nested deeper than 32 levels"),
    ("deep-by-aliases", ["train", "c.yaml"], {"c.yaml": _alias_chain(40)},
     "nested deeper than 32 levels once its aliases are expanded"),
    ("deep-set", ["search", "--set", "latency.x=" + "[" * 40 + "]" * 40], {},
     "--set latency.x: YAML nested deeper than 32 levels"),
    ("oversized-file", ["train", "c.yaml"], {"c.yaml": "# " + "x" * (1 << 20) + "\n"},
     "more than the 1048576 allowed"),
    ("oversized-set", ["train", "--set", "train.x=" + "y" * ((1 << 20) + 1)], {},
     "more than the 1048576 allowed"),
    ("long-int-file", ["train", "c.yaml"], {"c.yaml": f"run: {{seed: {LONG_INT}}}\n"},
     "integer longer than 4300 digits"),
    ("long-int-set", ["latency", "measure", "--set", f"latency.n={LONG_INT}"], {},
     "--set latency.n: YAML integer longer than 4300 digits"),
    ("long-int-nested", ["search", "c.yaml"], {"c.yaml": f"latency: {{a: [{LONG_INT}]}}\n"},
     "integer longer than 4300 digits"),
    ("impossible-date", ["train", "c.yaml"], {"c.yaml": "train: {x: 2020-13-45}\n"},
     "month must be in 1..12"),
    ("malformed", ["train", "c.yaml"], {"c.yaml": "train: [1, 2\n"}, "malformed YAML"),
    ("malformed-huge-set", ["train", "--set", "train.x=[" + "a, " * 100_000], {},
     "is not a valid YAML scalar/list"),
    ("not-utf8", ["train", "c.yaml"], {"c.yaml": b"run: {name: \xff\xfe}\n"}, "not a UTF-8"),
    ("top-level-list", ["train", "c.yaml"], {"c.yaml": "- 1\n- 2\n"}, "expected a mapping"),
    ("config-is-dir", ["train", "d"], {"d/x": ""}, "config path is not a file"),
    # -- out-of-range numbers ---------------------------------------------------------------
    ("seed-negative", ["train", "--set", "run.seed=-1"], {}, "'run.seed'"),
    ("seed-2**32", ["search", "--set", f"run.seed={2**32}"], {}, "less than or equal to 4294967295"),
    ("seed-2**64", ["prune", "--set", f"run.seed={BIG}"], {}, "less than or equal to 4294967295"),
    ("seed-in-file", ["latency", "measure", "c.yaml"], {"c.yaml": f"run: {{seed: {BIG}}}\n"},
     "'run.seed'"),
    ("seed-quickstart", ["quickstart", "--set", "run.seed=-5"], {}, "'run.seed'"),
    ("epochs-huge", ["train", "--set", "train.epochs=1000000000"], {},
     "train.epochs: expected at most 100000"),
    ("epochs-1-default-warmup", ["train", "--set", "train.epochs=1"], {},
     "the recipe's default: set train.warmup_epochs lower"),
    ("latency-n-huge", ["latency", "measure", "--set", "latency.n=1000000000"], {},
     "'latency.n': input should be less than or equal to 100000"),
    ("latency-pool-factor", ["latency", "measure", "--set", "latency.pool_factor=1000"], {},
     "'latency.pool_factor'"),
    ("latency-batch", ["latency", "measure", "--set", "latency.batch=100000"], {}, "'latency.batch'"),
    ("latency-repeats", ["latency", "measure", "--set", "latency.repeats=1000000000"], {},
     "'latency.repeats'"),
    ("batch-size-huge", ["train", "--set", "data.batch_size=100000"], {}, "'data.batch_size'"),
    ("data-limit-huge", ["prune", "--set", f"data.limit={BIG}"], {}, "'data.limit'"),
    ("budget-huge", ["search", "--set", "budget=10000000"], {}, "from 1 to 1000000"),
    ("budget-relative-huge", ["search", "--set", "budget=+99999999999"], {}, "from 1 to 1000000"),
    ("search-bn-batches", ["search", "--set", "evaluation.bn_batches=100000000"], {},
     "'evaluation.bn_batches'"),
    ("early-stopping-negative-min-epochs", ["search", "--set", "benchmark.name=builtin", "--set",
     "early_stopping.min_epochs=-1"], {}, "'early_stopping.min_epochs'"),
    ("early-stopping-min-epochs-past-curve", ["search", "--set", "benchmark.name=builtin", "--set",
     "objectives=[top1,latency_ms]", "--set", "early_stopping.min_epochs=10"], {},
     "below the benchmark's 10 training epochs"),
    *[(f"early-stopping-delta-{delta}", ["search", "--set", "benchmark.name=builtin", "--set",
       f"early_stopping.delta={delta}"], {}, "'early_stopping.delta'") for delta in ("0", "1.5")],
    ("early-stopping-supernet-mode", ["search", "--set", "early_stopping.min_epochs=7"], {},
     "a supernet search has no learning curves"),
    ("early-stopping-no-top1", ["search", "--set", "benchmark.name=builtin", "--set",
     "objectives=[latency_ms,macs]", "--set", "early_stopping.min_epochs=3"], {},
     "objectives must be top1 and costs"),
    ("quickstart-epochs", ["quickstart", "--set", "epochs=1000000"], {}, "'epochs'"),
    ("quickstart-budget", ["quickstart", "--set", "search_budget=100000000"], {}, "'search_budget'"),
    ("prune-finetune-epochs", ["prune", "--set", "finetune.epochs=1000000"], {},
     "'finetune.epochs'"),
    ("prune-lr-negative", ["prune", "--set", "finetune.lr=-1"], {}, "'finetune.lr'"),
    ("prune-lr-text", ["prune", "--set", "finetune.lr=fast"], {}, "'finetune.lr'"),
    ("cluster-port-0", ["cluster", "up", "--port", "0"], {}, "'--port'"),
    ("cluster-port-70000", ["cluster", "up", "--port", "70000"], {}, "'--port'"),
    ("cluster-dashboard-port", ["cluster", "up", "--dashboard-port", "-1"], {},
     "'--dashboard-port'"),
    ("cluster-num-cpus", ["cluster", "up", "--num-cpus", "0"], {}, "'--num-cpus'"),
    # -- hostile names and paths --------------------------------------------------------------
    ("name-too-long", ["train", "--set", "run.name=" + "a" * 101], {}, "at most 100 characters"),
    ("name-filesystem-limit", ["latency", "measure", "--set", "run.name=" + "b" * 300], {},
     "at most 100 characters"),
    ("name-nul", ["train", "c.yaml"], {"c.yaml": 'run: {name: "a\\0b"}\n'}, "'a\\x00b'"),
    ("name-slash", ["search", "--set", "run.name=../escape"], {}, "only letters, digits"),
    ("name-space", ["prune", "--set", "run.name=a b"], {}, "only letters, digits"),
    ("name-dotdot", ["train", "--set", "run.name=.."], {}, "only letters, digits"),
    ("root-is-a-file", ["latency", "measure", "--set", "run.root=f.txt", "--set", "latency.n=2"],
     {"f.txt": "not a folder"}, "f.txt is not a directory"),
    ("root-under-a-file", ["latency", "measure", "--set", "run.root=f.txt/sub"],
     {"f.txt": "not a folder"}, "cannot create run directory"),
    ("root-unwritable", ["latency", "measure", "--set", "run.root=/proc/nasbench-h19"], {},
     "cannot create run directory /proc/nasbench-h19/"),
    # -- wrong runs and weak messages ------------------------------------------------------------
    ("resume-missing", ["train", "--resume", "{tmp}/missing"], {}, "run not found"),
    ("resume-not-a-run", ["train", "--resume", "d"], {"d/x": ""}, "has no manifest.json"),
    ("resume-search-with-train", ["train", "--resume", "s"],
     {"s": lambda p: _fake_run(p, "search", "data: {name: digits}\nbudget: 4\n")},
     "with `nasbench train`: it is a `search` run"),
    ("resume-train-with-search", ["search", "--resume", "t"], {"t": lambda p: _fake_run(p, "train")},
     "with `nasbench search`: it is a `train` run"),
    ("resume-latency-with-prune", ["prune", "--resume", "t"],
     {"t": lambda p: _fake_run(p, "latency")}, "it is a `latency` run"),
    ("resume-without-config", ["train", "--resume", "t"],
     {"t": lambda p: _fake_run(p, "train", config=None)}, "it has no config.yaml"),
    ("weights-empty", ["prune", "--set", "model.weights=w.pt"], {"w.pt": b""},
     "is not a weights file: the file is empty"),
    ("weights-pickle", ["prune", "--set", "model.weights=w.pt"],
     {"w.pt": lambda p: torch.save({"x": _Evil()}, p)}, "refused it (Trying to load unsupported GLOBAL"),
    ("weights-garbage", ["prune", "--set", "model.weights=w.pt"], {"w.pt": b"\x00garbage" * 10},
     "tensors-only loader refused it"),
    ("weights-plain-pickle", ["prune", "--set", "model.weights=w.pt"],
     {"w.pt": pickle.dumps(_Evil())}, "pickled objects are never loaded"),
    # -- submit validates before it ships --------------------------------------------------------
    ("submit-bad-seed", ["submit", "--", "train", "--set", "run.seed=-1"], {}, "'run.seed'"),
    ("submit-bomb", ["submit", "--", "search", "c.yaml"], {"c.yaml": "latency:\n" + _bomb()},
     "expands to more than 100000 nodes"),
    ("submit-latency-n", ["submit", "--", "latency", "measure", "--set", "latency.n=1000000000"],
     {}, "'latency.n'"),
    ("submit-missing-config", ["submit", "--", "prune", "nope.yaml"], {}, "config file not found"),
    ("submit-unknown-command", ["submit", "--", "trian"], {}, "No such command 'trian'"),
    ("submit-unknown-option", ["submit", "--", "train", "--bogus"], {}, "No such option: --bogus"),
    ("submit-unknown-key", ["submit", "--", "quickstart", "--set", "epoch=2"], {}, "unknown key"),
]


# -- corrupted and truncated files -------------------------------------------------------------
# Real artifacts (a train run with its checkpoint, a search run, a latency run with a fitted
# predictor and lookup table) are made once per session, then each case copies one and breaks a
# file in it: every reader must name the file in one line and write nothing.

_REAL: dict[str, Path] = {}
_TINY = ["--quiet", "--set", "data.name=synthetic", "--set", "data.limit=32",
         "--set", "data.batch_size=16"]


def _real(kind: str) -> Path:
    """The session's real `kind` run ("train", "search", "latency" or a lottery "prune"), made
    on first use."""
    import shutil
    import tempfile

    from nasbench.cli import main

    if kind not in _REAL:
        root = Path(tempfile.mkdtemp(prefix="h19-real-"))
        atexit.register(shutil.rmtree, root, True)
        args = {
            "train": ["train", *_TINY, "--set", "train.epochs=1", "--set", "train.warmup_epochs=0",
                      "--set", "train.num_random=0", "--set", "train.bn_recal_batches=1",
                      "--set", "train.val_max_batches=1"],
            "search": ["search", *_TINY, "--set", "budget=2", "--set", "evaluation.bn_batches=1",
                       "--set", "evaluation.val_batches=1"],
            "latency": ["latency", "measure", "--quiet", "--set", "latency.n=24",
                        "--set", "latency.repeats=2"],
            "prune": ["prune", *_TINY, "--set", "model.source=timm", "--set", "model.name=test_resnet",
                      "--set", "prune.method=lottery", "--set", "prune.sparsity=0.4",
                      "--set", "prune.kwargs={train: 2it, controls: [random]}",
                      "--set", "finetune.epochs=0", "--set", "onnx=false"],
        }[kind]
        commands = [[*args, "--set", f"run.root={root}", "--set", f"run.name={kind}"]]
        if kind == "latency":
            commands += [["latency", "fit", str(root / kind), "--force"],
                         ["latency", "fit", str(root / kind), "--force", "--lut"]]
        for command in commands:
            try:
                main(command)
            except SystemExit as exc:
                assert not exc.code, f"{command}: exit {exc.code}"
        _REAL[kind] = root / kind
    return _REAL[kind]


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    """The same 1 KiB of noise every run (a failing case must fail again)."""
    import random

    path.write_bytes(random.Random(19).randbytes(1024))


def _not_json(path: Path) -> None:
    path.write_text("{not json", encoding="utf-8")


def _drop_keys(*keys: str) -> Callable[[Path], None]:
    def drop(path: Path) -> None:
        doc = json.loads(path.read_text())
        for key in keys:
            doc.pop(key)
        path.write_text(json.dumps(doc))
    drop.__name__ = f"drop_{'_'.join(keys)}"
    return drop


def _torn_line(path: Path) -> None:
    """A journal line cut in the middle, with lines after it (not a torn last line)."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0][: len(lines[0]) // 2] + b"\n" + b"".join(lines))


def _broken(kind: str, name: str, damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the real `kind` run at the case's path, with file `name` damaged."""
    import shutil

    def make(target: Path) -> None:
        shutil.copytree(_real(kind), target)
        if kind in ("search", "train", "prune", "latency"):  # resumable: killed, not completed
            manifest = json.loads((target / "manifest.json").read_text())
            manifest["status"] = "failed"
            (target / "manifest.json").write_text(json.dumps(manifest))
        damage(target / name)
    make.__name__ = f"{kind}_{name}_{damage.__name__}"
    return make


def _as_made(kind: str) -> Callable[[Path], None]:
    """A copy of the real `kind` run as it was made: completed."""
    import shutil

    def make(target: Path) -> None:
        shutil.copytree(_real(kind), target)
    make.__name__ = f"{kind}_as_made"
    return make


def _file_from(kind: str, name: str, damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """One file of the real `kind` run copied to the case's path, then damaged."""
    import shutil

    def make(target: Path) -> None:
        shutil.copy(_real(kind) / name, target)
        damage(target)
    make.__name__ = f"{kind}_{name}_{damage.__name__}"
    return make


EVAL = "evaluations.parquet"
CKPT = "checkpoints/epoch_0001"
FILE_CASES: list[tuple[str, list[str], Files, str]] = [
    *[(f"{label}-parquet-{verb}", args, {"s": _broken("search", EVAL, damage)}, EVAL)
      for label, damage in (("truncated", _half), ("garbage", _garbage))
      for verb, args in (("results", ["results", "s"]), ("export", ["export", "s", "--arch-id", "x"]),
                         ("resume", ["search", "--resume", "s"]))],
    *[(f"torn-journal-{verb}", args, {"s": _broken("search", "evaluations.log.jsonl", _torn_line)},
       "evaluations.log.jsonl")
      for verb, args in (("results", ["results", "s"]), ("export", ["export", "s", "--arch-id", "x"]),
                         ("resume", ["search", "--resume", "s"]))],
    ("latency-resume-changed-n", ["latency", "measure", "--resume", "l", "--set", "latency.n=25"],
     {"l": _broken("latency", "manifest.json", lambda p: None)}, "latency.n was 24, now 25"),
    ("latency-resume-changed-seed", ["latency", "measure", "--resume", "l", "--set", "run.seed=1"],
     {"l": _broken("latency", "manifest.json", lambda p: None)}, "run.seed was 0, now 1"),
    ("latency-resume-completed", ["latency", "measure", "--resume", "l"], {"l": _as_made("latency")},
     "already completed; nothing to resume"),
    ("torn-journal-latency-resume", ["latency", "measure", "--resume", "l"],
     {"l": _broken("latency", "latency_visits.log.jsonl", _torn_line)}, "latency_visits.log.jsonl"),
    *[(f"latency-archs-{label}-resume", ["latency", "measure", "--resume", "l"],
       {"l": _broken("latency", "latency_archs.json", damage)}, "latency_archs.json")
      for label, damage in (("garbage", _garbage), ("missing-keys", _drop_keys("archs")))],
    ("pareto-garbage-results", ["results", "s"], {"s": _broken("search", "pareto.parquet", _garbage)},
     "pareto.parquet"),
    ("manifest-not-json-results", ["results", "s"], {"s": _broken("search", "manifest.json", _not_json)},
     "manifest.json"),
    ("manifest-not-json-export", ["export", "s", "--arch-id", "x"],
     {"s": _broken("search", "manifest.json", _not_json)}, "manifest.json"),
    ("manifest-not-json-resume", ["train", "--resume", "t"],
     {"t": _broken("train", "manifest.json", _not_json)}, "manifest.json"),
    ("manifest-truncated-latency-fit", ["latency", "fit", "l"],
     {"l": _broken("latency", "manifest.json", _half)}, "manifest.json"),
    ("calibration-not-json", ["search", "--resume", "s"],
     {"s": _broken("search", "calibration.json", _not_json)}, "calibration.json"),
    ("calibration-truncated", ["search", "--resume", "s"],
     {"s": _broken("search", "calibration.json", _half)}, "calibration.json"),
    ("calibration-missing-keys", ["search", "--resume", "s"],
     {"s": _broken("search", "calibration.json", _drop_keys("calib"))}, "calibration.json"),
    ("latency-parquet-truncated-fit", ["latency", "fit", "l"],
     {"l": _broken("latency", "latency.parquet", _half)}, "latency.parquet"),
    ("latency-parquet-garbage-fit", ["latency", "fit", "l", "--lut"],
     {"l": _broken("latency", "latency.parquet", _garbage)}, "latency.parquet"),
    ("latency-parquet-truncated-evaluate", ["latency", "evaluate", "p", "l"],
     {"p": _broken("latency", "manifest.json", lambda p: None),
      "l": _broken("latency", "latency.parquet", _half)}, "latency.parquet"),
    *[(f"checkpoint-json-{label}-resume", ["train", "--resume", "t"],
       {"t": _broken("train", CKPT + ".json", damage)}, "epoch_0001")
      for label, damage in (("not-json", _not_json), ("truncated", _half),
                            ("missing-keys", _drop_keys("build_config", "space")))],
    *[(f"checkpoint-{part}-{label}-resume", ["train", "--resume", "t"],
       {"t": _broken("train", CKPT + suffix, damage)}, "epoch_0001")
      for part, suffix in (("weights", ".safetensors"), ("optim", ".optim.safetensors"))
      for label, damage in (("truncated", _half), ("garbage", _garbage))],
    *[(f"checkpoint-{label}-search", ["search", "--set", "supernet.run=t", "--set", "budget=2"],
       {"t": _broken("train", CKPT + suffix, damage)}, "epoch_0001")
      for label, suffix, damage in (("json-missing-keys", ".json", _drop_keys("build_config")),
                                    ("json-not-json", ".json", _not_json),
                                    ("weights-truncated", ".safetensors", _half))],
    *[(f"predictor-{label}-search", ["search", "--set", f"predictors.latency_ms_pred=l/{name}",
                                    "--set", "objectives=[top1,latency_ms_pred]"],
       {"l": _broken("latency", name, damage)}, name)
      for label, name, damage in (
          ("fit-truncated", "latency_predictor.json", _half),
          ("fit-not-json", "latency_predictor.json", _not_json),
          ("fit-missing-keys", "latency_predictor.json", _drop_keys("model")),
          ("fit-garbage", "latency_predictor.json", _garbage),
          ("fit-table-garbage", "latency_predictor.parquet", _garbage),
          ("fit-table-truncated", "latency_predictor.parquet", _half),
          ("lut-truncated", "latency_lut.json", _half),
          ("lut-missing-keys", "latency_lut.json", _drop_keys("entries")),
          ("lut-garbage", "latency_lut.json", _garbage))],
    ("predictor-truncated-evaluate", ["latency", "evaluate", "p", "l"],
     {"p": _broken("latency", "latency_predictor.json", _half),
      "l": _broken("latency", "manifest.json", lambda p: None)}, "latency_predictor.json"),
    ("predictor-table-garbage-evaluate", ["latency", "evaluate", "p", "l"],
     {"p": _broken("latency", "latency_predictor.parquet", _garbage),
      "l": _broken("latency", "manifest.json", lambda p: None)}, "latency_predictor.parquet"),
    ("weights-random-pt-train", ["train", "--set", "supernet.from_timm=resnet18",
                                 "--set", "supernet.weights=w.pt"], {"w.pt": _garbage},
     "error: supernet.weights='/"),
    ("weights-pickle-train", ["train", "--set", "supernet.from_timm=resnet18",
                              "--set", "supernet.weights=w.pt"],
     {"w.pt": lambda p: torch.save({"x": _Evil()}, p)},
     "/w.pt' is not a weights file: torch's tensors-only loader refused it"),
    ("weights-truncated-safetensors-prune", ["prune", "--set", "model.weights=w.safetensors"],
     {"w.safetensors": _file_from("train", CKPT + ".safetensors", _half)}, "w.safetensors"),
    ("weights-random-pt-prune", ["prune", "--set", "model.weights=w.pt"], {"w.pt": _garbage}, "w.pt"),
    ("table-garbage-bench", ["bench", "optimizers", "--quick", "--set", "table=t.parquet"],
     {"t.parquet": _garbage}, "t.parquet"),
    ("table-truncated-bench", ["bench", "optimizers", "--quick", "--set", "table=t.parquet"],
     {"t.parquet": _file_from("search", EVAL, _half)}, "t.parquet"),
]


def _drop_dense_row(path: Path) -> None:
    """metrics.csv without its `dense` row (the lottery's levels follow it), lines intact."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("dense,")))


def _levels_not_a_list(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["levels"] = "all of them"
    path.write_text(json.dumps(doc))


# `--resume` of a run with a damaged file: refused before the run is reopened, so the harness's
# byte-for-byte check covers its manifest (status included) and every other file.
LOTTERY = "lottery/state.json"
RESUME_CASES: list[tuple[str, list[str], Files, str]] = [
    *[(f"manifest-{label}-resume-{kind}", [kind, "--resume", "r"],
       {"r": _broken(kind, "manifest.json", damage)}, "manifest.json")
      for kind in ("search", "prune") for label, damage in (("not-json", _not_json),
                                                            ("truncated", _half))],
    ("manifest-truncated-resume-train", ["train", "--resume", "t"],
     {"t": _broken("train", "manifest.json", _half)}, "manifest.json"),
    ("search-resume-other-metrics", ["search", "--resume", "s", "--set", "objectives=[top1,params]"],
     {"s": _broken("search", "manifest.json", lambda p: None)}, "evaluations table measures"),
    ("search-resume-other-calibration", ["search", "--resume", "s",
                                         "--set", "evaluation.bn_batches=2"],
     {"s": _broken("search", "manifest.json", lambda p: None)}, "calibration.json holds"),
    *[(f"train-resume-changed-{label}", ["train", "--resume", "t", "--set", setting],
       {"t": _broken("train", "manifest.json", lambda p: None)}, expected)
      for label, setting, expected in (
          ("lr", "train.lr=0.3", "train.lr was"),
          ("seed", "run.seed=7", "sampled archs with seed"),
          ("batch", "data.batch_size=8", "steps per epoch"),
          ("fewer-epochs", "train.epochs=0", "train.epochs"))],
    ("journal-garbage-resume", ["search", "--resume", "s"],
     {"s": _broken("search", "evaluations.log.jsonl", _garbage)}, "evaluations.log.jsonl"),
    *[(f"lottery-state-{label}-resume", ["prune", "--resume", "p"],
       {"p": _broken("prune", LOTTERY, damage)}, "state.json")
      for label, damage in (("not-json", _not_json), ("truncated", _half), ("garbage", _garbage),
                            ("missing-keys", _drop_keys("levels")),
                            ("levels-not-a-list", _levels_not_a_list))],
    *[(f"lottery-metrics-{label}-resume", ["prune", "--resume", "p"],
       {"p": _broken("prune", "metrics.csv", damage)}, "metrics.csv")
      for label, damage in (("truncated", _half), ("garbage", _garbage),
                            ("no-dense-row", _drop_dense_row))],
    *[(f"lottery-{label}-resume", ["prune", "--resume", "p"],
       {"p": _broken("prune", f"lottery/{name}", damage)}, name)
      for label, name, damage in (("init-truncated", "init.safetensors", _half),
                                  ("rewind-garbage", "rewind.safetensors", _garbage),
                                  ("level-weights-truncated", "level_1/weights.safetensors", _half),
                                  ("level-masks-garbage", "level_1/masks.safetensors", _garbage),
                                  ("control-weights-truncated",
                                   "control_random/weights.safetensors", _half))],
]


def _listing(root: Path) -> dict[str, tuple[int, int] | str]:
    """Each file's size and mtime; a folder only by name (a lock's info file, made and removed
    while the lock is held, moves its folder's mtime without leaving anything behind)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _make(folder: Path, files: Files) -> None:
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The case's folder as working dir and results root; no Ray cluster (a fresh home), and
    `submit` must never reach the Jobs API."""
    from nasbench.distributed import jobs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NASBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("NASBENCH_HOME", str(tmp_path / "home"))

    def no_submit(*args, **kwargs):
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(jobs, "submit", no_submit)
    return tmp_path


# -- wrong run types, out-of-range numbers and bad names for the commands not covered above --------
MORE_CASES: list[tuple[str, list[str], Files, str]] = [
    ("export-a-train-run", ["export", "t", "--arch-id", "x"], {"t": lambda p: _fake_run(p, "train")},
     "not a search run"),
    ("export-a-latency-run", ["export", "l", "--pick", "top1>0"],
     {"l": lambda p: _fake_run(p, "latency")}, "not a search run"),
    ("export-missing-run", ["export", "{tmp}/nope", "--arch-id", "x"], {}, "run not found"),
    ("export-not-a-run", ["export", "d", "--arch-id", "x"], {"d/x": ""}, "has no manifest.json"),
    ("export-from-bogus", ["export", "s", "--pick", "top1>0", "--from", "best"],
     {"s": lambda p: _fake_run(p, "search")}, "--from must be one of front, all"),
    ("results-missing-run", ["results", "{tmp}/nope"], {}, "run not found"),
    ("results-not-a-run", ["results", "d"], {"d/x": ""}, "has no manifest.json"),
    ("results-manifest-list", ["results", "r"], {"r/manifest.json": "[1, 2]"}, "not an object"),
    ("results-manifest-not-utf8", ["results", "r"], {"r/manifest.json": b"{\"a\": \"\xff\"}"},
     "manifest.json"),
    ("results-manifest-empty", ["results", "r"], {"r/manifest.json": ""}, "manifest.json"),
    ("results-manifest-no-command", ["results", "r"], {"r/manifest.json": '{"status": "failed"}'},
     "lacks the key(s) ['command']"),
    ("results-rows-negative", ["results", "--rows", "-1"], {}, "'--rows'"),
    ("latency-fit-a-train-run", ["latency", "fit", "t"], {"t": lambda p: _fake_run(p, "train")},
     "latency"),
    ("latency-fit-missing-run", ["latency", "fit", "{tmp}/nope"], {}, "run not found"),
    ("latency-fit-holdout-2", ["latency", "fit", "l", "--holdout", "2"],
     {"l": lambda p: _fake_run(p, "latency")}, "holdout"),
    ("latency-fit-folds-1", ["latency", "fit", "l", "--folds", "1"],
     {"l": lambda p: _fake_run(p, "latency")}, "'--folds'"),
    ("latency-fit-regressor-bogus", ["latency", "fit", "l", "--regressors", "magic"],
     {"l": _broken("latency", "manifest.json", lambda p: None)}, "magic"),
    ("latency-fit-encoding-bogus", ["latency", "fit", "l", "--encoding", "words"],
     {"l": _broken("latency", "manifest.json", lambda p: None)}, "words"),
    ("latency-evaluate-missing-predictor", ["latency", "evaluate", "p", "l"],
     {"p": lambda p: _fake_run(p, "latency"),
      "l": _broken("latency", "manifest.json", lambda p: None)}, "latency_predictor.json"),
    ("latency-evaluate-on-a-search-run", ["latency", "evaluate", "l", "s"],
     {"l": _broken("latency", "manifest.json", lambda p: None),
      "s": lambda p: _fake_run(p, "search")}, "latency"),
    ("latency-n-zero", ["latency", "measure", "--set", "latency.n=0"], {}, "'latency.n'"),
    ("latency-repeats-zero", ["latency", "measure", "--set", "latency.repeats=0"], {},
     "'latency.repeats'"),
    ("latency-batch-text", ["latency", "measure", "--set", "latency.batch=many"], {},
     "'latency.batch'"),
    ("prune-sparsity-1", ["prune", "--set", "prune.sparsity=1.0"], {}, "'prune.sparsity'"),
    ("prune-sparsity-negative", ["prune", "--set", "prune.sparsity=-0.1"], {}, "'prune.sparsity'"),
    ("prune-train-epochs-negative", ["prune", "--set", "model.train_epochs=-1"], {},
     "'model.train_epochs'"),
    ("prune-export-without-run", ["prune", "--set", "model.source=export"], {},
     "model.source=export needs model.run and model.arch_id"),
    ("prune-export-from-a-train-run", ["prune", "--set", "model.source=export",
                                       "--set", "model.run=t", "--set", "model.arch_id=x"],
     {"t": lambda p: _fake_run(p, "train")}, "not a search run"),
    ("prune-weights-missing", ["prune", "--set", "model.weights=nope.pt"], {}, "does not exist"),
    ("prune-resume-a-search-run", ["prune", "--resume", "s"],
     {"s": lambda p: _fake_run(p, "search")}, "it is a `search` run"),
    ("train-val-fraction", ["train", "--set", "data.val_fraction=1.5"], {}, "'data.val_fraction'"),
    ("train-epochs-zero", ["train", "--set", "train.epochs=0"], {}, "train.epochs"),
    ("latency-resume-a-train-run", ["latency", "measure", "--resume", "t"],
     {"t": lambda p: _fake_run(p, "train")}, "it is a `train` run"),
    ("latency-resume-missing", ["latency", "measure", "--resume", "{tmp}/nope"], {}, "run not found"),
    ("train-resume-a-latency-run", ["train", "--resume", "l"],
     {"l": lambda p: _fake_run(p, "latency")}, "it is a `latency` run"),
    ("train-weights-without-timm", ["train", "--set", "supernet.weights=w.pt"], {"w.pt": b"x"},
     "supernet.weights need supernet.from_timm"),
    ("search-supernet-run-missing", ["search", "--set", "supernet.run={tmp}/nope"], {},
     "nope"),
    ("search-supernet-run-is-search", ["search", "--set", "supernet.run=s"],
     {"s": lambda p: _fake_run(p, "search")}, "s"),
    ("search-optimizer-bogus", ["search", "--set", "optimizer.name=hillclimb9"], {}, "hillclimb9"),
    ("search-objectives-empty", ["search", "--set", "objectives=[]"], {}, "objectives"),
    ("search-objective-unknown", ["search", "--set", "objectives=[top1,speed]"], {}, "speed"),
    ("search-constraint-malformed", ["search", "--set", "constraints=[params <<= 3]"], {},
     "params <<= 3"),
    ("search-val-batches-zero", ["search", "--set", "evaluation.val_batches=0"], {},
     "'evaluation.val_batches'"),
    ("search-ray-workers-zero", ["search", "--set", "ray.num_workers=0"], {}, "'ray.num_workers'"),
    ("search-predictor-missing", ["search", "--set", "predictors.latency_ms_pred=nope.json",
                                  "--set", "objectives=[top1,latency_ms_pred]"], {}, "nope.json"),
    ("search-resume-latency-run", ["search", "--resume", "l"],
     {"l": lambda p: _fake_run(p, "latency")}, "it is a `latency` run"),
    ("quickstart-epochs-zero", ["quickstart", "--set", "epochs=0"], {}, "'epochs'"),
    ("quickstart-name-slash", ["quickstart", "--set", "run.name=a/b"], {}, "only letters, digits"),
    ("bench-unknown", ["bench", "nosuchbench"], {}, "nosuchbench"),
    ("bench-optimizers-seeds-zero", ["bench", "optimizers", "--set", "seeds=0"], {}, "seeds"),
    ("bench-optimizers-budgets-empty", ["bench", "optimizers", "--set", "budgets=[]"], {},
     "budgets"),
    ("bench-optimizers-problem-bogus", ["bench", "optimizers", "--set", "problems=[knapsack]"], {},
     "knapsack"),
    ("bench-optimizers-table-missing", ["bench", "optimizers", "--set", "table=nope.parquet"], {},
     "nope.parquet"),
    ("bench-optimizers-nb201-needed", ["bench", "optimizers", "--set", "problems=[nb201-cifar10]"], {},
     "needs nb201=PATH"),
    *[(f"bench-optimizers-nb201-{label}", ["bench", "optimizers", "--set", "nb201=b.pth",
                                           "--set", "problems=[nb201-cifar10]"], {"b.pth": content},
       "b.pth")
      for label, content in (("garbage", _garbage), ("pickle-stack-underflow", b"\x80\x02a."),
                             ("evil-pickle", lambda p: torch.save({"x": _Evil()}, p)),
                             ("empty", b""))],
    ("bench-unknown-option", ["bench", "optimizers", "--set", "speed=9"], {}, "speed"),
    ("jobs-stop-no-cluster", ["jobs", "stop", "raysubmit_x"], {}, "cluster"),
    ("jobs-logs-no-cluster", ["jobs", "logs", "raysubmit_x"], {}, "cluster"),
    ("jobs-list-bad-address", ["jobs", "list", "--address", "http://127.0.0.1:1"], {}, "127.0.0.1:1"),
    ("cluster-object-store-zero", ["cluster", "up", "--object-store-mb", "0"], {},
     "'--object-store-mb'"),
    ("cluster-port-text", ["cluster", "up", "--port", "http"], {}, "'--port'"),
    ("submit-bad-name", ["submit", "--", "train", "--set", "run.name=../x"], {}, "only letters"),
    ("submit-corrupt-config", ["submit", "--", "train", "c.yaml"], {"c.yaml": b"\xff\xfe"},
     "not a UTF-8"),
]


def _resumed(args: list[str]) -> str | None:
    """The run folder a `--resume` case reopens: the one place allowed to change."""
    return args[args.index("--resume") + 1] if "--resume" in args else None


# Free-form dicts, key by key: each known key typed and bounded, an unknown key named with the
# allowed ones (optimizer settings and prune.kwargs by the registry's options models, `latency:`
# by `latency measure`'s bounds).
_OPT, _PRUNE = "optimizer.settings", "prune.kwargs"
DICT_CASES: list[tuple[str, list[str], Files, str]] = [
    *[(f"optimizer-{label}", ["search", "--set", f"optimizer.name={name}", "--set", f"{_OPT}={value}"],
       {}, expected)
      for label, name, value, expected in (
          ("pop-size-huge", "nsga2", "{pop_size: 1000000000000}", "pop_size=1000000000000"),
          ("pop-size-negative", "nsga2", "{pop_size: -2}", "pop_size=-2"),
          ("pop-size-text", "nsga2", "{pop_size: lots}", "pop_size='lots'"),
          ("unknown-key", "nsga2", "{popsize: 3}", "no setting 'popsize'; settings: max_stall, pop_size"),
          ("eta-huge", "agemoea", "{eta: 1000000.0}", "eta=1000000.0: Input should be less"),
          ("max-stall-huge", "random", "{max_stall: 10000000}", "max_stall=10000000"),
          ("batch-size-zero", "random", "{batch_size: 0}", "batch_size=0"),
          ("linas-inner-huge", "linas", "{inner_generations: 100000}", "inner_generations=100000"),
          ("linas-folds-huge", "linas", "{folds: 1000}", "folds=1000"),
          ("linas-regressor-unknown", "linas", "{regressors: [magic]}", "unknown regressor 'magic'"),
          ("linas-regressors-empty", "linas", "{regressors: []}", "regressors=[]"),
          ("zc-pool-huge", "random", "{zc_warm_start: {proxy: snip, pool: 10000000}}",
           "'pool': 10000000}: Input should be less than or equal to 1000000"),
          ("optuna-population-huge", "optuna", "{population_size: 10000000}",
           "population_size=10000000: Input should be less than or equal to 1000000"),
          ("optuna-study-name-long", "optuna", "{study_name: " + "s" * 300 + "}",
           "String should have at most 200 characters"),
          ("optuna-storage-bogus", "optuna", "{storage: redis}", "storage='redis'"))],
    *[(f"search-latency-{label}", ["search", "--set", f"latency={value}",
                                   "--set", "objectives=[top1,latency_ms]"], {}, expected)
      for label, value, expected in (
          ("repeats-text", "{repeats: many}", "repeats='many'"),
          ("repeats-negative", "{repeats: -1}", "repeats=-1"),
          ("batch-huge", "{batch: 1000000000}", "batch=1000000000"),
          ("threads-zero", "{threads: 0}", "threads=0"),
          ("clock-bogus", "{clock: sundial}", "clock='sundial'"),
          ("unknown-key", "{repeat: 5}", "unknown setting 'repeat'; allowed: backend, batch"),
          ("device-key", "{device: cpu}", "unknown setting 'device'"))],
    ("search-latency-unknown-key-unused", ["search", "--set", "latency={bogus: 1}"], {},
     "unknown setting 'bogus'"),
    *[(f"prune-kwargs-{label}", ["prune", "--set", f"prune.method={method}", "--set", f"{_PRUNE}={value}"],
       {}, expected)
      for label, method, value, expected in (
          ("gradual-steps-huge", "gradual_magnitude", "{steps: 1000000000}", "steps=1000000000"),
          ("gradual-unknown-key", "gradual_magnitude", "{stepz: 3}",
           "has no option 'stepz'; options: steps"),
          ("layer-dp-samples-text", "layer_dp", "{num_samples: many}", "num_samples='many'"),
          ("layer-dp-samples-negative", "layer_dp", "{num_samples: -4}", "num_samples=-4"),
          ("layer-dp-batch-huge", "layer_dp", "{batch_size: 10000000}", "batch_size=10000000"),
          ("layer-dp-amounts-huge", "layer_dp", "{num_amounts: 100000000}",
           "num_amounts=100000000: Input should be less than or equal to 10001"),
          ("layer-dp-steps-huge", "layer_dp", "{iterative_steps: 100000}",
           "iterative_steps=100000: Input should be less than or equal to 1000"),
          ("erk-seed-negative", "erk", "{seed: -1}", "seed=-1"),
          ("random-seed-huge", "random", "{seed: 100000000000}", "seed=100000000000"),
          ("lottery-seed-huge", "lottery", "{seed: 100000000000}", "seed=100000000000"),
          ("exclude-not-strings", "global_magnitude", "{exclude: [1, 2]}",
           "exclude pattern 1 must be a string"),
          ("include-types-int", "global_magnitude", "{include_types: [5]}",
           "module type 5 is neither a torch.nn class nor its name"))],
    *[(f"prune-structured-kwargs-{label}", ["prune", "--set", "prune.kind=structured",
                                            "--set", "prune.method=layer_dp",
                                            "--set", f"{_PRUNE}={value}"], {}, expected)
      for label, value, expected in (
          ("samples-huge", "{num_samples: 10000000}", "num_samples=10000000: Input should be less"),
          ("seed-negative", "{seed: -3}", "seed=-3"),
          ("unknown-key", "{samples: 3}", "has no option 'samples'; options: importance"))],
    *[(f"supernet-kwargs-{label}", [*command.split(), "--set", f"supernet.family={family}",
                                    "--set", f"supernet.kwargs={value}"], {}, expected)
      for label, command, family, value, expected in (
          ("width-huge", "train", "mbv3", "{stem_width: 100000000}",
           "mbv3 option 'stem_width' is 100000000; expected 0..65536"),
          ("width-text", "train", "mbv3", "{stem_width: wide}", "'stem_width' must be a number"),
          ("resolution-negative", "train", "mbv3", "{resolutions: [16, -32]}",
           "'resolutions'[1] is -32"),
          ("stage-missing-key", "train", "mbv3", "{stages: [{width: 8}]}",
           "'stages'[0]: missing key 'act'"),
          ("expand-nan", "train", "resnet", "{expands: [.nan]}", "'expands'[0] is nan"),
          ("depths-not-list", "latency measure", "resnet", "{depths: 3}", "'depths' must be a list"),
          ("vit-unknown", "train", "vit", "{num_heads: 4}", "unknown vit option 'num_heads'"),
          ("too-many-weights", "train", "mbv3", "{head_width: 60000, final_width: 60000, "
           "stages: [{width: 60000, stride: 1, act: relu, se: false, depths: [60000], kernels: [3], "
           "expands: [6]}]}", "supernet would hold"))],
    ("supernet-width-mult-huge", ["train", "--set", "supernet.width_mult=1000000"], {},
     "parameters (at most 4,000,000,000)"),
]

ALL_CASES = CASES + FILE_CASES + RESUME_CASES + MORE_CASES + DICT_CASES


@pytest.mark.parametrize("case, args, files, expected", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, sandbox, case, args, files, expected):
    _make(sandbox, files)
    before = _listing(sandbox)
    resumed = _resumed(args)
    kept = {str(p.relative_to(sandbox)): p.read_bytes()
            for p in (sandbox / resumed).rglob("*") if p.is_file()} if resumed else {}
    result = cli(*[a.replace("{tmp}", str(sandbox)) for a in args])
    lines = result.err.strip().splitlines()
    assert result.code == 2, result.err[-2000:]
    assert len(lines) == 1, result.err[-2000:]
    assert "Traceback" not in result.err + result.out
    assert expected in lines[0]
    assert len(lines[0]) < 600  # a hostile value is quoted short, not echoed whole
    after = _listing(sandbox)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert changed <= set(kept), sorted(changed)  # nothing new; only a reopened run's files
    for name in changed:  # a refused resume leaves its run byte for byte (the lock's file is
        assert (sandbox / name).read_bytes() == kept[name], name  # opened: its mtime moves)


def test_the_suite_is_large_and_its_cases_distinct():
    cases = ALL_CASES
    assert len(cases) >= 150
    assert len({c[0] for c in cases}) == len(cases)

    def shown(content):  # a file maker by its name (`_broken` names its kind, file and damage)
        return content.__name__ if callable(content) else repr(content)

    assert len({(tuple(c[1]), tuple((k, shown(v)) for k, v in c[2].items()))
                for c in cases}) == len(cases)
    commands = {c[1][0] for c in cases}
    assert commands >= {"train", "search", "prune", "export", "latency", "results", "quickstart",
                        "bench", "cluster", "submit", "jobs"}


def test_the_csv_reader_refuses_every_cut_but_one_at_a_row_end(tmp_path):
    """metrics.csv cut at each of its bytes: a cut just after a row's newline reads as exactly
    the rows before it (a shorter, whole file); any other cut is one RunError naming the file
    (a cut inside the last value keeps the row's fields, so only the missing newline tells)."""
    import io

    import pandas as pd

    from nasbench_core.errors import RunError
    from nasbench_core.readers import read_csv

    full = pd.DataFrame({"stage": ["dense", "level_1", "control_random"],
                         "val_acc": [0.6251, 0.59375, 0.5], "sparsity": [0.0, 0.2, None]})
    text = full.to_csv(index=False)
    path = tmp_path / "metrics.csv"
    for cut in range(1, len(text)):
        path.write_text(text[:cut])
        if text[cut - 1] == "\n":
            rows = text[:cut].count("\n") - 1
            expected = pd.read_csv(io.StringIO(text)).head(rows)
            got = read_csv(path, RunError)
            pd.testing.assert_frame_equal(got, expected, check_dtype=rows > 0)
        else:
            with pytest.raises(RunError, match="metrics.csv is cut short"):
                read_csv(path, RunError)
    lines = text.splitlines(keepends=True)  # a middle row torn, the rows after it whole
    path.write_text(lines[0] + lines[1] + lines[2][:9] + "\n" + lines[3])
    with pytest.raises(RunError, match="corrupted: row 3 has 2 fields, the header 3"):
        read_csv(path, RunError)
    path.write_bytes(b"stage,val_acc\n\xff\xfe,1\n")
    with pytest.raises(RunError, match="metrics.csv is not a readable CSV file"):
        read_csv(path, RunError)


# -- the YAML bounds themselves ---------------------------------------------------------------

def test_yaml_within_the_bounds_loads_with_anchors_and_merge_keys():
    text = "base: &b {lr: 0.1, epochs: 3}\ntrain: {<<: *b, epochs: 4}\nlist: [*b, *b]\n"
    assert yaml_bounds.load_bounded(text) == {"base": {"lr": 0.1, "epochs": 3},
                                              "train": {"lr": 0.1, "epochs": 4},
                                              "list": [{"lr": 0.1, "epochs": 3}] * 2}


@pytest.mark.parametrize("lists", [30, 31, 32, 33])
def test_yaml_depth_bound_is_exact(lists):
    """`lists` nested lists around a scalar are `lists + 1` levels; 32 levels are allowed."""
    text = "[" * lists + "1" + "]" * lists
    if lists + 1 <= yaml_bounds.MAX_DEPTH:
        assert yaml_bounds.load_bounded(text) is not None
    else:
        with pytest.raises(yaml_bounds.YamlLimitError, match="nested deeper"):
            yaml_bounds.load_bounded(text)


@pytest.mark.parametrize("length, ok", [(30, True), (31, False)])
def test_yaml_depth_bound_counts_aliases_expanded(length, ok):
    """c0 = [x] is 2 levels, each alias wrapper one more, under the root mapping: the chain's
    last entry is `length + 2` levels deep once expanded, while the text is 4 deep."""
    text = _alias_chain(length)
    if ok:
        assert yaml_bounds.load_bounded(text)[f"c{length - 1}"] is not None
    else:
        with pytest.raises(yaml_bounds.YamlLimitError, match="once its aliases are expanded"):
            yaml_bounds.load_bounded(text)


def test_yaml_node_bound_counts_expanded_aliases_exactly():
    # a list of k aliases to a 9-scalar list: 1 + k * (1 + 9) nodes once expanded, plus the anchor
    def doc(k: int) -> str:
        return f"a: &a [1,1,1,1,1,1,1,1,1]\nb: [{','.join(['*a'] * k)}]\n"

    def nodes(k: int) -> int:
        return 1 + 2 + 10 + 1 + 1 + 10 * k  # root, keys a and b, a's list, b's list, k copies

    k_ok = (yaml_bounds.MAX_NODES - 15) // 10
    assert nodes(k_ok) <= yaml_bounds.MAX_NODES < nodes(k_ok + 1)
    assert len(yaml_bounds.load_bounded(doc(k_ok))["b"]) == k_ok
    with pytest.raises(yaml_bounds.YamlLimitError, match="expands to more than"):
        yaml_bounds.load_bounded(doc(k_ok + 1))


def test_a_bomb_is_refused_fast():
    started = time.perf_counter()
    with pytest.raises(yaml_bounds.YamlLimitError):
        yaml_bounds.load_bounded("x:\n" + _bomb(12, 9))  # 9**12 nodes expanded
    assert time.perf_counter() - started < 2.0


def test_stored_configs_keep_names_from_before_the_bound(tmp_path):
    """A run made before names were bounded still opens (`Run.config`)."""
    from nasbench.runs import load_run

    run = _fake_run(tmp_path / "old", "latency")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"] = {"run": {"name": "old run with spaces", "root": str(tmp_path)}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert load_run(run).config.run.name == "old run with spaces"


# -- secrets ---------------------------------------------------------------------------------

def test_the_token_file_is_0600_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    from nasbench.distributed import auth

    monkeypatch.setattr(os, "umask", os.umask)  # the real umask, whatever the caller set
    previous = os.umask(0o022)  # the usual umask, under which a plain file would be 0644
    seen = []
    real_replace = os.replace

    def checking_replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checking_replace)
    try:
        path = auth.new_token_file(tmp_path / "token")
    finally:
        os.umask(previous)
    assert seen == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_start_head_refuses_ports_out_of_range_before_any_work(tmp_path):
    from nasbench.distributed import cluster
    from nasbench.distributed.dashboard import ClusterError

    for port, dashboard in ((0, 8265), (6379, 65536)):
        with pytest.raises(ClusterError, match="expected a port from 1 to 65535"):
            cluster.start_head(tmp_path / "home", port=port, dashboard_port=dashboard)
    assert not (tmp_path / "home").exists()


# -- SIGTERM -----------------------------------------------------------------------------------

def test_sigterm_ends_a_train_run_as_failed_terminated_with_one_line_and_143(tmp_path):
    exe = Path(sys.executable).with_name("nasbench")
    args = [str(exe)] if exe.exists() else [sys.executable, "-m", "nasbench.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               NASBENCH_RESULTS=str(tmp_path / "results"))
    proc = subprocess.Popen(
        [*args, "train", "--quiet", "--set", "run.name=victim", "--set", "data.name=synthetic",
         "--set", "data.limit=64", "--set", "data.batch_size=16", "--set", "train.epochs=100000",
         "--set", "train.warmup_epochs=0", "--set", "train.num_random=0",
         "--set", "train.bn_recal_batches=1", "--set", "train.val_max_batches=1",
         "--set", "device=cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "results" / "victim" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines() == ["nasbench: terminated by SIGTERM"]
    assert "Traceback" not in out + err
    manifest = json.loads((tmp_path / "results" / "victim" / "manifest.json").read_text())
    assert (manifest["status"], manifest["error"]) == ("failed", "terminated")
    assert manifest["ended"] is not None


def test_sigterm_handler_is_restored_after_a_command(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    cli("train", "--set", "run.seed=-1")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A local Ray head of our own (on free ports, its own NASBENCH_HOME), stopped after."""
    from nasbench.distributed import cluster

    home = tmp_path / "home"
    monkeypatch.setenv("NASBENCH_HOME", str(home))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # restored after, whatever Ray sets
        monkeypatch.delenv(key, raising=False)
    cluster.start_head(home, port=cluster.free_port(), dashboard_port=cluster.free_port(),
                       num_cpus=1, object_store_mb=200)
    try:
        yield home
    finally:
        cluster.stop_head(home)


@pytest.mark.ray
def test_jobs_stop_ends_a_train_job_cleanly(cli, ray_head, tmp_path):
    """`jobs stop` is SIGTERM to the job's processes: one line in the log, no traceback, and the
    run marked `failed: terminated`."""
    from nasbench.distributed import jobs

    root = tmp_path / "results"
    submitted = cli(
        "submit", "--working-dir", str(ROOT), "--", "train", "--quiet",
        "--set", "data.name=synthetic", "--set", "data.limit=64", "--set", "data.batch_size=16",
        "--set", "train.epochs=100000", "--set", "train.warmup_epochs=0",
        "--set", "train.num_random=0", "--set", "train.val_max_batches=1",
        "--set", "train.bn_recal_batches=1", "--set", f"run.root={root}", "--set", "run.name=job")
    assert submitted.code == 0, submitted.err
    job_id = submitted.out.strip()
    target = jobs.resolve_target(None, ray_head)
    metrics = root / "job" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not metrics.exists():
        assert time.monotonic() < deadline, jobs.job_logs(target, job_id)[-2000:]
        time.sleep(0.5)
    stopped = cli("jobs", "stop", job_id)
    assert stopped.code == 0, stopped.err
    assert jobs.wait_for(target, job_id, timeout=60) == "STOPPED"
    logs = jobs.job_logs(target, job_id)
    assert "nasbench: terminated by SIGTERM" in logs
    assert "Traceback" not in logs
    manifest = json.loads((root / "job" / "manifest.json").read_text())
    assert (manifest["status"], manifest["error"]) == ("failed", "terminated")


# -- NATS-Bench fast mode: per-arch pickles go through the restricted loader --------------------

class _Marker:
    """Unpickled, it would create the folder `path`: proof that a payload ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_natsbench_fast_mode_never_runs_a_per_arch_payload(tmp_path):
    """The issue's crafted `000000.pickle.pbz2` in a fast-mode directory: opening works (the
    meta file is plain data), the first query reads the arch's pickle, which is refused in one
    line, and the payload never runs."""
    import bz2

    pytest.importorskip("nats_bench")
    from nasbench.tabular.published import TOPOLOGY_SPACE, open_natsbench, topology_string
    from nasbench_core.errors import UserError

    folder = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    folder.mkdir()
    arch = TOPOLOGY_SPACE.smallest()
    (folder / "meta.pickle.pbz2").write_bytes(bz2.compress(pickle.dumps(
        {"meta_archs": [topology_string(arch)]})))
    marker = tmp_path / "payload-ran"
    (folder / "000000.pickle.pbz2").write_bytes(bz2.compress(pickle.dumps(
        {"200": _Marker(marker)})))
    bench = open_natsbench(folder, "tss")
    with pytest.raises(UserError, match="000000.pickle.pbz2 is not a plain-data pickle") as error:
        bench.query(arch)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_natsbench_fast_mode_still_reads_a_plain_per_arch_file(tmp_path):
    """The same layout holding plain data answers the query: the guard refuses code, not data."""
    import bz2

    pytest.importorskip("nats_bench")
    from nasbench.tabular.published import TOPOLOGY_SPACE, open_natsbench, topology_string
    from tests.test_tabular_published import _nats_results

    folder = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    folder.mkdir()
    arch = TOPOLOGY_SPACE.smallest()
    text = topology_string(arch)
    (folder / "meta.pickle.pbz2").write_bytes(bz2.compress(pickle.dumps({"meta_archs": [text]})))
    (folder / "000000.pickle.pbz2").write_bytes(bz2.compress(pickle.dumps(
        {"200": _nats_results(text, 0, 5, 70.0)})))
    assert open_natsbench(folder, "tss").query(arch)["top1"] == pytest.approx(70.0)
