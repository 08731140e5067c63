"""Lottery tickets: rewinding, schedules, level sizes, per-layer rates, resume, controls."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

import pruners
from nasbench_core.errors import ConfigError
from pruners.lottery import model_state, reinitialize
from tests.test_pruners import sgd_train_fn, small_cnn

OUTPUT = "8.weight"  # small_cnn's classifier, the last selected layer


def test_parse_span():
    assert pruners.parse_span("0it") == pruners.Span(0, "it")
    assert pruners.parse_span(" 500it") == pruners.Span(500, "it")
    assert pruners.parse_span("2ep") == pruners.Span(2, "ep")
    assert pruners.parse_span("2ep").steps(7) == 14 and pruners.parse_span("5it").steps(7) == 5
    for bad in ("2", "ep", "1.5ep", "-3it", "3 epochs"):
        with pytest.raises(ConfigError, match="is not a step count like '0it'"):
            pruners.parse_span(bad)


@pytest.mark.parametrize(("sparsity", "levels"), [(0.2, 1), (0.36, 2), (0.488, 3), (0.5, 4), (0.59, 4)])
def test_a_target_sparsity_takes_the_fewest_levels_that_reach_it(sparsity, levels):
    """fraction 0.2 compounds to 0.2, 0.36, 0.488, 0.5904: exact hits need no extra level."""
    records = pruners.lottery_ticket(small_cnn(), sgd_train_fn(), sparsity=sparsity, fraction=0.2,
                                     rewind="0it", train="1it", layers_to_ignore=[])
    assert [r["level"] for r in records] == list(range(levels + 1))
    assert records[-1]["sparsity"] == pytest.approx(sparsity, abs=1e-3)


def calls_of(base):
    """A train_fn that records each call's (start, end) and the iterations it reports."""
    calls = []

    def train_fn(model, start, end, on_step):
        calls.append((str(start), str(end), []))
        base(model, start, end, lambda it, ep: (calls[-1][2].append(it), on_step(it, ep)))

    return train_fn, calls


@pytest.mark.parametrize(("rewind", "train", "expected"), [
    ("0it", "6it", [("0it", "6it"), ("0it", "6it"), ("0it", "6it")]),
    ("2it", "6it", [("0it", "6it"), ("2it", "6it"), ("2it", "6it")]),
    ("1ep", "2ep", [("0it", "2ep"), ("1ep", "2ep"), ("1ep", "2ep")]),
])
def test_levels_train_from_the_rewind_point_to_the_end(rewind, train, expected):
    """Rewound to iteration k of T, each level trains iterations k+1..T (Frankle et al. 2020;
    open_lth continues its schedule from k), with the absolute iteration reported."""
    train_fn, calls = calls_of(sgd_train_fn(steps_per_epoch=3))
    pruners.lottery_ticket(small_cnn(), train_fn, levels=2, rewind=rewind, train=train)
    assert [(s, e) for s, e, _ in calls] == expected
    k = pruners.parse_span(rewind).steps(3)
    assert calls[0][2] == list(range(1, 7))
    assert calls[1][2] == calls[2][2] == list(range(k + 1, 7))


def test_a_learning_rate_schedule_continues_after_rewinding():
    """adam_train_fn's `lr_lambda` sees the absolute steps: a level rewound to iteration 4 of 10
    resumes the schedule at step 4 instead of restarting its warmup at 0."""
    from nasbench.classify import adam_train_fn

    seen = []

    def lr_lambda(step):
        seen.append(step)
        return min(1.0, (step + 1) / 5)

    def batches(epoch, start):
        gen = torch.Generator().manual_seed(epoch)
        x, y = torch.randn(20, 1, 8, 8, generator=gen), torch.randint(0, 10, (20,), generator=gen)
        return [(x[i : i + 4], y[i : i + 4]) for i in range(4 * start, 20, 4)]

    pruners.lottery_ticket(small_cnn(), adam_train_fn(batches, 5, 1e-3, lr_lambda), levels=1,
                           rewind="4it", train="2ep")
    assert seen == list(range(10)) + list(range(4, 10))


def test_every_level_starts_from_the_rewind_weights(tmp_path):
    """At the start of each level's training the kept weights are the rewind snapshot's and the
    pruned ones zero; skipping the rewind would start from the previous level's weights."""
    starts = []
    base = sgd_train_fn()

    def train_fn(model, start, end, on_step):
        starts.append((model_state(model), pruners.get_masks(model)))
        base(model, start, end, on_step)

    pruners.lottery_ticket(small_cnn(), train_fn, levels=3, rewind="2it", train="5it",
                           out_dir=tmp_path)
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    for state, masks in starts[1:]:
        assert masks
        for name, value in rewind.items():
            want = value * masks[name] if name in masks else value
            assert torch.equal(state[name], want), name


def test_levels_prune_fraction_of_remaining_and_rewind(tmp_path):
    model = small_cnn()
    init = model_state(model)
    seen = {}
    rows = pruners.lottery_ticket(
        model, sgd_train_fn(), levels=3, fraction=0.2, rewind="0it", train="4it",
        out_dir=tmp_path, on_level=lambda lvl, m: seen.setdefault(lvl, model_state(m)),
    )
    masks = pruners.get_masks(model)
    assert OUTPUT not in masks  # the output layer stays dense (open_lth's default)
    n = sum(m.numel() for m in masks.values())
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

    def train(m, start, end, on_step):
        def spy(it, ep):
            on_step(it, ep)
            if it == 2 and not snaps:
                snaps.append(model_state(m))
        base(m, start, end, spy)

    pruners.lottery_ticket(model, train, levels=1, rewind="2it", train="4it", scope="layer",
                           out_dir=tmp_path)
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    assert all(torch.equal(rewind[k], snaps[0][k]) for k in rewind)
    masks = pruners.get_masks(model)
    for m in masks.values():  # layer-wise: each layer loses 20% (rounded)
        assert abs(int((~m).sum()) - 0.2 * m.numel()) <= 1


def per_level_pruned(**kwargs):
    counts = []
    pruners.lottery_ticket(small_cnn(), sgd_train_fn(), levels=3, train="1it",
                           on_level=lambda lvl, m: counts.append(
                               {k: int((~v).sum()) for k, v in pruners.get_masks(m).items()}),
                           **kwargs)
    return counts[1:]


def test_output_layer_rates():
    """Default: the output layer stays dense; `[]` prunes it with the rest; `output_rate`
    prunes it at its own rate (the paper's half rate) while the rest lose `fraction`."""
    assert all(OUTPUT not in c for c in per_level_pruned())
    assert all(c[OUTPUT] > 0 for c in per_level_pruned(layers_to_ignore=[]))
    kept_out, kept_fc = 320, 2048
    for c in per_level_pruned(output_rate=0.1, scope="layer"):
        kept_out -= round(0.1 * kept_out)
        kept_fc -= round(0.2 * kept_fc)
        assert abs((320 - c[OUTPUT]) - kept_out) <= 1
        assert abs((2048 - c["6.weight"]) - kept_fc) <= 1
    ignored = per_level_pruned(layers_to_ignore=["0.*", OUTPUT])
    assert all("0.weight" not in c and OUTPUT not in c for c in ignored)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layers_to_ignore": ["fc.*"]}, "layers_to_ignore pattern 'fc.*' matches no pruned layer"),
    ({"layers_to_ignore": [OUTPUT], "output_rate": 0.1}, "which layers_to_ignore keeps dense"),
    ({"layers_to_ignore": ["*"]}, "keeps every selected layer dense"),
    ({"sparsity": 0.95, "layers_to_ignore": ["6.weight", OUTPUT]}, "can prune at most"),
])
def test_bad_per_layer_settings_are_one_line_errors(kwargs, message):
    kwargs = {"levels": 1, **kwargs}
    if "sparsity" in kwargs:
        del kwargs["levels"]
    with pytest.raises(pruners.PruneError, match=message):
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), train="1it", **kwargs)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    """Killed during level 2 and rerun, the run ends bitwise equal to an uninterrupted one
    (masks and weights), with every level recorded once."""
    kwargs = {"levels": 3, "train": "3it", "rewind": "1it", "controls": ["random", "reinit"], "seed": 0}
    base = sgd_train_fn()

    def noisy(m, start, end, on_step):  # global randomness in training, as dropout would be
        def step(it, ep):
            with torch.no_grad():
                m[0].bias.add_(1e-3 * torch.randn(m[0].bias.shape))
            on_step(it, ep)
        base(m, start, end, step)

    full = small_cnn()
    pruners.lottery_ticket(full, noisy, out_dir=tmp_path / "a", **kwargs)
    calls = []

    def killed(m, start, end, on_step):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        noisy(m, start, end, on_step)

    with pytest.raises(KeyboardInterrupt):
        pruners.lottery_ticket(small_cnn(), killed, out_dir=tmp_path / "b", **kwargs)
    torch.randn(7)  # the caller's random state differs now, and must not matter
    resumed = small_cnn(seed=5)  # the state on disk, not the model given, decides
    rows = pruners.lottery_ticket(resumed, noisy, out_dir=tmp_path / "b", **kwargs)
    assert [r["level"] for r in rows] == [0, 1, 2, 3, 3, 3]
    a, b = model_state(full), model_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = pruners.get_masks(full), pruners.get_masks(resumed)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    for kind in ("random", "reinit"):
        for f in ("masks", "weights"):
            x = safetensors.torch.load_file(str(tmp_path / "a" / f"control_{kind}" / f"{f}.safetensors"))
            y = safetensors.torch.load_file(str(tmp_path / "b" / f"control_{kind}" / f"{f}.safetensors"))
            assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(("change", "message"), [
    ({"rewind": "2it"}, "made with rewind=\"1it\", not rewind=\"2it\""),
    ({"fraction": 0.3}, "made with fraction=0.2, not fraction=0.3"),
    ({"scope": "layer"}, "made with scope=\"global\", not scope=\"layer\""),
    ({"layers_to_ignore": []}, "made with layers_to_ignore="),
    ({"levels": 3}, "made with levels=2, not levels=3"),
    ({"controls": ["random"]}, r"made with controls=\[\], not controls=\[\"random\"\]"),
])
def test_resume_with_changed_settings_is_refused(tmp_path, change, message):
    kwargs = {"levels": 2, "train": "3it", "rewind": "1it", "out_dir": tmp_path}
    pruners.lottery_ticket(small_cnn(), sgd_train_fn(), **kwargs)
    with pytest.raises(pruners.PruneError, match=message) as err:
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), **{**kwargs, **change})
    assert "\n" not in str(err.value)


def test_rewind_beyond_training_is_a_config_error():
    with pytest.raises(ConfigError, match="after the end of training"):
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), levels=1, rewind="9it", train="3it")
    with pytest.raises(ConfigError, match="ended before the rewind point"):
        pruners.lottery_ticket(small_cnn(), sgd_train_fn(), levels=1, rewind="9ep", train="3it")


def ticket(tmp_path, levels=5):
    model = small_cnn()
    pruners.lottery_ticket(model, sgd_train_fn(), levels=levels, train="3it", out_dir=tmp_path)
    states = {n: safetensors.torch.load_file(str(tmp_path / f"{n}.safetensors"))
              for n in ("init", "rewind")}
    return model, pruners.get_masks(model), states


def test_random_control_is_independent_of_the_masks_a_model_has(tmp_path):
    """Given the ticket itself (its masks installed, pruned weights zero), the random control
    still draws uniformly: per-layer counts equal, but it keeps a ticket-kept weight only about
    as often as its density, and starts from the rewind weights."""
    model, masks, states = ticket(tmp_path)
    starts = []

    def train_fn(m, start, end, on_step):
        starts.append(model_state(m))

    out = pruners.lottery_control(model, masks, "random", train_fn, rewind_state=states["rewind"],
                                  train="3it")
    both = expected = kept = 0.0
    for k, m in masks.items():
        assert int(m.sum()) == int(out[k].sum())
        assert not torch.equal(out[k], m), k
        both += float((out[k] & m).sum())
        expected += float(m.float().mean()) * float(m.sum())  # a uniform draw's overlap
        kept += float(m.sum())
        assert torch.equal(starts[0][k], states["rewind"][k] * out[k])
    assert abs(both - expected) / kept < 0.1  # returning the ticket would give both == kept
    assert pruners.get_masks(model).keys() == masks.keys()


def test_reinit_draws_from_the_models_own_initialisation():
    """torchvision ResNet-18: after training-like drift (weights x3), reinitialising from the
    construction snapshot gives every layer its construction std within 10%, with new values
    (near-zero correlation with the snapshot). Each module's `reset_parameters` would not: its
    convs come out at under half the std torchvision's kaiming-normal init gives them."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    init = model_state(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    pruners.prune(model, "global_magnitude", 0.5)
    with torch.no_grad():
        for name in layers:
            model.get_submodule(name).weight_orig.mul_(3.0)
    reinitialize(model, init, seed=3)
    now = model_state(model)
    masks = pruners.get_masks(model)
    for name in layers:
        key = f"{name}.weight"
        full = model.get_submodule(name).weight_orig.detach()
        assert torch.equal(now[key], full * masks[key])
        kept = full[masks[key]]  # the pruned weights stay zero
        ratio = float(kept.std()) / float(init[key].std())
        assert 0.9 < ratio < 1.1, (key, ratio)
        corr = torch.corrcoef(torch.stack([kept, init[key][masks[key]]]))[0, 1]
        assert abs(float(corr)) < 0.2, (key, float(corr))
    conv = torchvision.models.resnet18().layer1[0].conv1
    constructed = float(conv.weight.detach().std())
    conv.reset_parameters()
    assert float(conv.weight.detach().std()) < 0.5 * constructed


def test_controls_inside_a_lottery_run(tmp_path):
    """`controls` train on copies at the final masks: `reinit` keeps the ticket's masks on new
    weights, `random` the per-layer counts; the model itself ends as the ticket."""
    model = small_cnn()
    seen, starts = {}, []
    base = sgd_train_fn()

    def train_fn(m, start, end, on_step):
        starts.append(model_state(m))
        base(m, start, end, on_step)

    rows = pruners.lottery_ticket(model, train_fn, levels=3, train="3it", rewind="1it",
                                  controls=["random", "reinit"], out_dir=tmp_path,
                                  on_control=lambda kind, lvl, m: seen.setdefault(kind, (lvl, m)))
    assert [r.get("control") for r in rows] == [None] * 4 + ["random", "reinit"]
    ticket_masks = pruners.get_masks(model)
    final = safetensors.torch.load_file(str(tmp_path / "level_3" / "weights.safetensors"))
    assert all(torch.equal(v, model_state(model)[k]) for k, v in final.items())
    random_masks, reinit_masks = (pruners.get_masks(seen[k][1]) for k in ("random", "reinit"))
    assert seen["random"][0] == seen["reinit"][0] == 3
    for k, m in ticket_masks.items():
        assert torch.equal(reinit_masks[k], m)
        assert int(random_masks[k].sum()) == int(m.sum()) and not torch.equal(random_masks[k], m)
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    reinit_start = starts[-1]
    for k, m in ticket_masks.items():
        assert not torch.equal(reinit_start[k], rewind[k] * m)  # new weights, same masks
    assert rows[-1]["sparsity"] == rows[3]["sparsity"]


def test_reinit_control_takes_a_user_init_function(tmp_path):
    model, masks, states = ticket(tmp_path, levels=2)
    fresh = small_cnn(seed=11)
    seen = []
    out = pruners.lottery_control(model, masks, "reinit", lambda m, s, e, f: None,
                                  reinit_fn=lambda seed: seen.append(seed) or fresh.state_dict(),
                                  seed=4, train="3it")
    assert seen == [4]
    for k, m in out.items():
        assert torch.equal(model_state(model)[k], fresh.state_dict()[k] * m)
    with pytest.raises(pruners.PruneError, match="needs init_state"):
        pruners.lottery_control(model, masks, "reinit", lambda m, s, e, f: None)
    with pytest.raises(pruners.PruneError, match="needs rewind_state"):
        pruners.lottery_control(model, masks, "random", lambda m, s, e, f: None)


def test_lottery_controls_through_prune_report_on_level_with_the_control():
    rows = []
    masks = pruners.prune(small_cnn(), "lottery", 0.5, train_fn=sgd_train_fn(), train="2it",
                          controls=["reinit"], layers_to_ignore=[],
                          on_level=lambda lvl, m, control=None: rows.append((lvl, control)))
    assert rows[-1] == (4, "reinit") and rows[:-1] == [(i, None) for i in range(5)]
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * 3592)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_lottery_in_another_dtype_rewinds_and_keeps_its_masks(tmp_path, dtype):
    """float64 and bf16 models rewind to their snapshot and keep pruned weights at zero through
    training, as float32 ones do (float64 takes the path cuda_ext's fused kernels do not)."""
    model = small_cnn().to(dtype)
    rows = pruners.lottery_ticket(model, sgd_train_fn(), levels=2, rewind="1it", train="3it",
                                  out_dir=tmp_path)
    assert rows[-1]["pruned"] > 0
    masks = pruners.get_masks(model)
    rewind = safetensors.torch.load_file(str(tmp_path / "rewind.safetensors"))
    state = model_state(model)
    for name, mask in masks.items():
        assert state[name].dtype == dtype
        assert not state[name][~mask].any(), name
        assert rewind[name].dtype == dtype
