"""One registry helper for every pluggable kind: same verbs, same refusal of duplicate names,
and options checked by value (types and ranges) before any work starts."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pydantic
import pydantic.dataclasses
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pruners
import search
import supernets
from nasbench.bench.registry import BENCHMARKS
from nasbench_core.errors import UserError
from nasbench_core.registry import Registry, option_names
from pruners import PRUNERS
from search.objectives import OBJECTIVES
from search.optimizers.base import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = {"supernets": supernets.SUPERNETS, "pruners": PRUNERS, "optimizers": OPTIMIZERS,
              "objectives": OBJECTIVES, "benchmarks": BENCHMARKS}
ENTRIES = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.list()]


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_kind_speaks_the_same_verbs(kind):
    reg = REGISTRIES[kind]
    names = reg.list()
    assert names and names == sorted(names) and len(reg) == len(names)
    assert [e.name for e in reg] == names
    for name in names:
        assert name in reg and reg.get(name) is reg.entry(name).obj
    with pytest.raises(UserError) as info:
        reg.get("no-such-" + kind)
    message = str(info.value)
    assert message == f"unknown {reg.kind} 'no-such-{kind}'; known: {', '.join(names)}"
    assert isinstance(info.value, reg.error)


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_kind_refuses_a_duplicate_name_and_keeps_the_first(kind):
    reg = REGISTRIES[kind]
    name = reg.list()[0]
    first = reg.get(name)
    with pytest.raises(ValueError, match=f"{reg.kind} '{name}' is already registered"):
        reg.add(name, object())
    assert reg.get(name) is first


def test_public_decorators_refuse_duplicates_too():
    with pytest.raises(ValueError, match="already registered"):
        pruners.register_pruner("lottery")(lambda model, targets, k, o: [])
    with pytest.raises(ValueError, match="already registered"):
        search.objectives.register_objective("top1", direction="max", unit="%", source="measured",
                                             help="")(lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        supernets.register_supernet("mbv3")(type("Fake", (supernets.Supernet,), {}))
    assert supernets.SUPERNETS.get("mbv3").__name__ != "Fake"


def _wrong_value(field_type) -> object:
    """A value of the wrong type for a field: a string for numbers and bools, a number else."""
    base = typing.get_origin(field_type) is typing.Annotated and typing.get_args(field_type)[0] or field_type
    if base in (int, float, bool) or base == int | float:
        return "3"
    return 3.5


def _fields(model) -> dict[str, object]:
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return {name: f.annotation for name, f in model.model_fields.items()}
    hints = typing.get_type_hints(model, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(model) if f.init}


OPTIONED = [(kind, name) for kind, name in ENTRIES if REGISTRIES[kind].entry(name).options is not None]


def test_every_pruner_and_optimizer_has_an_options_model():
    assert {n for k, n in OPTIONED if k == "pruners"} == set(PRUNERS.list())
    assert {n for k, n in OPTIONED if k == "optimizers"} == set(OPTIMIZERS.list())


@pytest.mark.parametrize(("kind", "name"), OPTIONED)
def test_options_default_and_each_wrong_type_is_named(kind, name):
    reg = REGISTRIES[kind]
    defaults = reg.validate(name, {})
    assert defaults is not None
    for option, annotation in _fields(reg.entry(name).options).items():
        bad = _wrong_value(annotation)
        with pytest.raises(UserError) as info:
            reg.validate(name, {option: bad}, where="here")
        text = str(info.value)
        assert text.startswith(f"here: {reg.kind} '{name}': {option}={bad!r}: ") and "\n" not in text
    with pytest.raises(UserError, match=f"has no {reg.option_word} 'bogus'; {reg.option_word}s: "):
        reg.validate(name, {"bogus": 1})


@pytest.mark.parametrize(("method", "options", "needle"), [
    ("lottery", {"fraction": 1.5}, "fraction=1.5: Input should be less than 1"),
    ("lottery", {"fraction": 0.0}, "fraction=0.0: Input should be greater than 0"),
    ("lottery", {"scope": "local"}, "scope='local': Input should be 'global' or 'layer'"),
    ("lottery", {"rewind": "3 epochs"}, "rewind='3 epochs': rewind point '3 epochs' is not a step count"),
    ("gradual_magnitude", {"steps": 0}, "steps=0: Input should be greater than or equal to 1"),
    ("gradual_magnitude", {"initial_sparsity": 1.0}, "initial_sparsity=1.0: Input should be less than 1"),
    ("layer_dp", {"num_amounts": 1}, "num_amounts=1: Input should be greater than or equal to 2"),
    ("layer_dp", {"worst_case": 1}, "worst_case=1: Input should be a valid boolean"),
    ("global_magnitude", {"min_keep": -1}, "min_keep=-1"),
    ("global_magnitude", {"min_keep": True}, "min_keep=True"),
    ("erk", {"score": "taylor"}, "score='taylor': Input should be 'magnitude' or 'random'"),
    ("uniform", {"seed": 1}, "'uniform' has no option 'seed'; options: (none)"),
])
def test_pruner_options_fail_by_value_before_any_weight_changes(method, options, needle):
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pruners.PruneError) as info:
        pruners.prune(model, method, 0.5, **options)
    assert needle in str(info.value)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(("name", "settings", "needle"), [
    ("nsga2", {"pop_size": 0}, "pop_size=0: Input should be greater than or equal to 1"),
    ("nsga2", {"pop_size": 2.0}, "pop_size=2.0: Input should be a valid integer"),
    ("linas", {"folds": 1}, "folds=1: Input should be greater than or equal to 2"),
    ("optuna", {"sampler": "cmaes"}, "sampler='cmaes': Input should be 'nsga2' or 'tpe'"),
    ("random", {"max_stall": 0}, "max_stall=0"),
    ("linas", {"regressors": "ridge"}, "regressors='ridge': Input should be a valid list"),
])
def test_optimizer_settings_fail_by_value(name, settings, needle):
    with pytest.raises(UserError) as info:
        search.create_optimizer(name, **settings)
    assert needle in str(info.value)


def test_an_optimizer_is_its_own_settings_model():
    opt = search.create_optimizer("nsga2", pop_size=8, eta=5.0)
    assert type(opt) is OPTIMIZERS.get("nsga2") and (opt.pop_size, opt.eta) == (8, 5.0)


# -- the helper on its own --------------------------------------------------------------------
class Opts(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    n: typing.Annotated[int, pydantic.Field(ge=1, le=9)] = 3


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(strict=True))
class DataOpts:
    x: float = 0.5


def test_discovery_runs_once_on_first_lookup_and_retries_after_a_failure():
    calls = []

    def discover():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("first try fails")
        reg.add("late", 1)

    reg = Registry("thing", discover=discover)
    with pytest.raises(ImportError):
        reg.list()
    assert reg.list() == ["late"] and reg.get("late") == 1 and len(calls) == 2


@given(st.integers(-20, 20))
def test_range_is_enforced_exactly_at_its_bounds(n):
    reg = Registry("thing")
    reg.add("a", object(), options=Opts)
    if 1 <= n <= 9:
        assert reg.validate("a", {"n": n}).n == n
    else:
        with pytest.raises(UserError, match=f"thing 'a': n={n}: Input should be"):
            reg.validate("a", {"n": n})


def test_pydantic_dataclasses_are_options_models_and_plain_classes_are_refused():
    reg = Registry("thing")
    reg.add("d", DataOpts, options=DataOpts)
    assert reg.validate("d", {"x": 2}) == DataOpts(x=2.0) and option_names(DataOpts) == ["x"]
    reg.add("none", object())
    assert reg.validate("none", {}) is None
    with pytest.raises(UserError, match="'none' has no option 'x'; options: \\(none\\)"):
        reg.validate("none", {"x": 1})
    with pytest.raises(TypeError, match="options model"):
        reg.add("bad", object(), options=dict)
    assert "bad" not in reg


def test_supernet_base_imports_no_registry_families_or_mos():
    """The registry lives apart from the base class, so base imports nothing that imports it."""
    tree = ast.parse((ROOT / "supernets/base.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m and m.split(".")[:2] in (["supernets", "registry"],
                                                                   ["supernets", "families"],
                                                                   ["supernets", "mos"])}
