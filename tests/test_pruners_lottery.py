"""Lottery tickets: rewinding, level sizes, resumability, controls, span parsing."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import pruners
from nasbench_core.errors import ConfigError
from pruners.lottery import model_state
from tests.test_pruners import sgd_train_fn, small_cnn


def test_parse_span():
    assert pruners.parse_span("0it") == pruners.Span(0, "it")
    assert pruners.parse_span(" 500it") == pruners.Span(500, "it")
    assert pruners.parse_span("2ep") == pruners.Span(2, "ep")
    for bad in ("2", "ep", "1.5ep", "-3it", "3 epochs"):
        with pytest.raises(ConfigError, match="is not a step count like '0it'"):
            pruners.parse_span(bad)


@pytest.mark.parametrize(("sparsity", "levels"), [(0.2, 1), (0.36, 2), (0.488, 3), (0.5, 4), (0.59, 4)])
def test_a_target_sparsity_takes_the_fewest_levels_that_reach_it(sparsity, levels):
    """fraction 0.2 compounds to 0.2, 0.36, 0.488, 0.5904: exact hits need no extra level."""
    records = pruners.lottery_ticket(small_cnn(), sgd_train_fn(), sparsity=sparsity, fraction=0.2,
                                     rewind="0it", train="1it")
    assert [r["level"] for r in records] == list(range(levels + 1))
    assert records[-1]["sparsity"] == pytest.approx(sparsity, abs=1e-3)


@pytest.mark.parametrize(("rewind", "train", "expected"), [
    ("0it", "6it", [6, 6, 6]), ("2it", "6it", [6, 4, 4]), ("1ep", "2ep", [6, 3, 3]),
])
def test_levels_after_rewinding_train_the_rest_of_the_schedule(tmp_path, rewind, train, expected):
    """Rewound to iteration k of T, each level trains T - k iterations (Frankle et al. 2020)."""
    base = sgd_train_fn(steps_per_epoch=3)
    lengths = []

    def train_fn(model, span, on_step):
        lengths.append(span.value * (3 if span.unit == "ep" else 1))
        base(model, span, on_step)

    pruners.lottery_ticket(small_cnn(), train_fn, levels=2, rewind=rewind, train=train,
                           out_dir=tmp_path)
    assert lengths == expected
    assert json.loads((tmp_path / "state.json").read_text())["retrain"] == f"{expected[1]}it"


def test_levels_prune_fraction_of_remaining_and_rewind(tmp_path):
    model = small_cnn()
    init = model_state(model)
    seen = {}
    rows = pruners.lottery_ticket(
        model, sgd_train_fn(), levels=3, fraction=0.2, rewind="0it", train="4it",
        out_dir=tmp_path, on_level=lambda lvl, m: seen.setdefault(lvl, model_state(m)),
    )
    n = sum(m.numel() for m in pruners.get_masks(model).values())
    kept = n
    for row in rows[1:]:
        kept -= round(0.2 * kept)
        assert row["pruned"] == n - kept
    assert [r["level"] for r in rows] == [0, 1, 2, 3]
    state = json.loads((tmp_path / "state.json").read_text())
    assert [r["level"] for r in state["levels"]] == [0, 1, 2, 3]
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    assert all(torch.equal(rewind[k], init[k]) for k in init)
    masks3 = pruners.load_masks(tmp_path / "level_3" / "masks.safetensors")
    masks2 = pruners.load_masks(tmp_path / "level_2" / "masks.safetensors")
    assert all(not (masks3[k] & ~masks2[k]).any() for k in masks3)  # masks only grow
    for k, m in masks3.items():
        assert not seen[3][k][~m].any()


def test_rewind_to_iteration_snapshot_and_layer_scope(tmp_path):
    model = small_cnn()
    snaps = []
    base = sgd_train_fn()

    def train(m, span, on_step):
        def spy(it, ep):
            on_step(it, ep)
            if it == 2 and not snaps:
                snaps.append(model_state(m))
        base(m, span, spy)

    pruners.lottery_ticket(model, train, levels=1, rewind="2it", train="4it", scope="layer",
                           out_dir=tmp_path)
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    assert all(torch.equal(rewind[k], snaps[0][k]) for k in rewind)
    masks = pruners.get_masks(model)
    for m in masks.values():  # layer-wise: each layer loses 20% (rounded)
        assert abs(int((~m).sum()) - 0.2 * m.numel()) <= 1


def test_resume_continues_after_last_finished_level(tmp_path):
    full = small_cnn()
    pruners.lottery_ticket(full, sgd_train_fn(), levels=3, train="3it", out_dir=tmp_path / "a")
    part = small_cnn()
    calls = []

    def killed(m, span, on_step):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        sgd_train_fn()(m, span, on_step)

    with pytest.raises(KeyboardInterrupt):
        pruners.lottery_ticket(part, killed, levels=3, train="3it", out_dir=tmp_path / "b")
    resumed = small_cnn()
    rows = pruners.lottery_ticket(resumed, sgd_train_fn(), levels=3, train="3it",
                                  out_dir=tmp_path / "b")
    assert [r["level"] for r in rows] == [0, 1, 2, 3]
    a, b = model_state(full), model_state(resumed)
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_rewind_beyond_training_is_a_config_error():
    with pytest.raises(ConfigError, match="after the end of training"):
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), levels=1, rewind="9it", train="3it")
    with pytest.raises(ConfigError, match="ended before the rewind point"):
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), levels=1, rewind="9ep", train="3it")


@pytest.mark.parametrize("kind", ["reinit", "random"])
def test_controls_keep_ticket_sparsity(kind):
    ticket = small_cnn()
    pruners.lottery_ticket(ticket, sgd_train_fn(), levels=2, train="3it")
    masks = pruners.get_masks(ticket)
    control = small_cnn()
    init = model_state(control)
    out = pruners.lottery_control(control, masks, kind, sgd_train_fn(), train="3it")
    for k, m in masks.items():
        assert int(m.sum()) == int(out[k].sum())
        module = control.get_submodule(k.rpartition(".")[0])
        assert not module.weight_orig[~out[k]].any()
    same_mask = all(torch.equal(out[k], masks[k]) for k in masks)
    assert same_mask == (kind == "reinit")
    if kind == "reinit":  # a fresh init, not the original one
        w = pruners.get_masks(control)
        assert not torch.equal(init["0.weight"] * w["0.weight"], model_state(control)["0.weight"])
