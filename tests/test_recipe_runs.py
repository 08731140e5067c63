"""The sampling recipes through `nasbench train`: a short run of each records its options, and
bad options or a space the recipe cannot shrink fail in one line before a run directory exists.
"""

from __future__ import annotations

import json

import pytest

import nasbench
from nasbench_core.errors import ConfigError, UserError

TRAIN = {"epochs": 2, "warmup_epochs": 0, "max_steps_per_epoch": 1, "bn_recal_batches": 1,
         "val_max_batches": 1, "num_random": 1}


def config(tmp_path, train, family="mbv3", **extra):
    return {"supernet": {"family": family, "preset": "tiny"},
            "data": {"name": "digits", "limit": 32, "batch_size": 16},
            "train": {**TRAIN, **train}, "device": "cpu",
            "run": {"root": str(tmp_path), "name": "r"}, **extra}


@pytest.mark.parametrize(("recipe", "section", "options"), [
    ("attentivenas", "attentive", {"mode": "worst_up", "candidates": 2}),
    ("ofa_ps", "ofa_ps", {"phases": ["depth"], "phase_epochs": [1, 1]}),
    ("pada", "pada", {"tau_start": 0.5}),
])
def test_each_recipe_runs_and_records_its_options(tmp_path, recipe, section, options):
    run = nasbench.train(config(tmp_path, {"recipe": recipe, section: options}), quiet=True)
    hparams = json.loads((run.path / "manifest.json").read_text())["hparams"]
    assert hparams["recipe"] == recipe
    assert {k: hparams[section][k] for k in options} == options
    assert (run.path / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs


@pytest.mark.parametrize(("train", "extra", "error", "message"), [
    ({"recipe": "attentivenas", "attentive": {"mode": "bestup"}}, {}, ConfigError,
     "train.attentive.mode: expected one of"),
    ({"recipe": "ofa_ps", "ofa_ps": {"phases": ["kernel"]}}, {"family": "resnet"}, UserError,
     "train.ofa_ps.phases: this space has no elastic kernel"),
    ({"recipe": "pada"}, {"runner": "ray"}, ConfigError, "set train.pada.data: false"),
])
def test_bad_recipe_options_fail_before_the_run_dir(tmp_path, train, extra, error, message):
    family = extra.pop("family", "mbv3")
    with pytest.raises(error) as info:
        nasbench.train(config(tmp_path, train, family, **extra), quiet=True)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())
