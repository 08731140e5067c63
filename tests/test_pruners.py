"""Pruners: oracle parity with torch's global_unstructured, exact counts, masks, reports, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

import pruners
from nasbench_core.errors import CheckpointError, UserError
from pruners.allocation import largest_remainder
from pruners.baselines import erk_densities


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def conv_linear(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def torch_oracle(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    torch_prune.global_unstructured(
        conv_linear(model), pruning_method=torch_prune.L1Unstructured, amount=sparsity
    )
    return {n[: -len("_mask")]: b.bool() for n, b in model.named_buffers() if n.endswith("_mask")}


def sgd_train_fn(steps_per_epoch: int = 3, seed: int = 0):
    """A tiny real training loop in the `train_fn(model, start, end, on_step)` form; step i's
    batch depends on (seed, i) alone, as a rewound or resumed schedule needs."""

    def train(model: nn.Module, start, end, on_step) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
        for it in range(start.steps(steps_per_epoch) + 1, end.steps(steps_per_epoch) + 1):
            gen = torch.Generator().manual_seed(seed * 100_003 + it)
            opt.zero_grad()
            x = torch.randn(8, 1, 8, 8, generator=gen)
            y = torch.randint(0, 10, (8,), generator=gen)
            dtype = next(model.parameters()).dtype  # float64/bf16 models get their own dtype
            nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
            opt.step()
            on_step(it, it / steps_per_epoch)

    return train


EXTRA_KWARGS = {
    "lottery": {"train_fn": sgd_train_fn(), "train": "2it"},
    "layer_dp": {"example_input": torch.zeros(1, 1, 8, 8), "num_samples": 16, "num_amounts": 11},
}


def pruned_total(masks) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def check_oracle(factory, sparsities):
    torch.manual_seed(0)
    state = factory().state_dict()
    for s in sparsities:
        ours, ref = factory(), factory()
        ours.load_state_dict(state)
        ref.load_state_dict(state)
        masks = pruners.prune(ours, "global_magnitude", s)
        expected = torch_oracle(ref, s)
        assert masks.keys() == expected.keys()
        for name, m in expected.items():
            assert torch.equal(masks[name], m), (s, name)


def test_oracle_global_unstructured_mobilenet():
    check_oracle(lambda: torchvision.models.mobilenet_v3_small(), [0.5, 0.9])


@pytest.mark.slow
def test_oracle_global_unstructured_resnet18():
    check_oracle(lambda: torchvision.models.resnet18(), [0.2, 0.5, 0.8, 0.9, 0.98])


@pytest.mark.parametrize("method", pruners.list_pruners())
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9])
def test_registry_exact_count_and_masks_survive_training(method, sparsity):
    model = small_cnn()
    n = sum(m.weight.numel() for m, _ in conv_linear(model))
    masks = pruners.prune(model, method, sparsity, **EXTRA_KWARGS.get(method, {}))
    assert pruned_total(masks) == round(sparsity * n)
    for name, mask in pruners.get_masks(model).items():
        assert torch.equal(mask, masks[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    pruners.MaskKeeper(model).attach(opt)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 1, 8, 8)).square().mean().backward()
        opt.step()
    model(torch.randn(1, 1, 8, 8))
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert not module.weight_orig[~mask].any()
        assert not module.weight[~mask].any()
    report = pruners.sparsity_report(model, torch.randn(1, 1, 8, 8))
    layers, glob = report.iloc[:-1], report.iloc[-1]
    assert glob["layer"] == "__global__"
    assert glob["params"] == layers["params"].sum() == n
    assert glob["pruned"] == layers["pruned"].sum() == round(sparsity * n)
    assert glob["sparsity"] == pytest.approx(round(sparsity * n) / n)
    assert (layers["kept_flops"] <= layers["flops"]).all()


@pytest.mark.parametrize("method", pruners.list_pruners())
def test_pruning_a_pruned_model_reaches_the_exact_total(method):
    """Earlier masks count toward round(s·N), also in layers a method keeps dense (uniform+'s
    first layer) or caps; the earlier pruned weights stay pruned."""
    model = small_cnn()
    n = sum(m.weight.numel() for m, _ in conv_linear(model))
    earlier = pruners.get_masks(pruners.prune(model, "global_magnitude", 0.3) and model)
    masks = pruners.prune(model, method, 0.8, **EXTRA_KWARGS.get(method, {}))
    assert pruned_total(masks) == round(0.8 * n)
    assert all(not (masks[k] & ~earlier[k]).any() for k in earlier)


@pytest.mark.parametrize("method", pruners.list_pruners())
def test_prune_permanent_equals_prune_then_make_permanent(method):
    ours, ref = small_cnn(), small_cnn()
    pruners.prune(ours, "global_magnitude", 0.3)  # earlier masks must be honoured too
    pruners.prune(ref, "global_magnitude", 0.3)
    counts = pruners.prune_permanent(ours, method, 0.8, **EXTRA_KWARGS.get(method, {}))
    pruners.prune(ref, method, 0.8, **EXTRA_KWARGS.get(method, {}))
    pruners.make_permanent(ref)
    assert not torch_prune.is_pruned(ours)
    expected = ref.state_dict()
    assert ours.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items()), method
    assert counts == {f"{name}.weight": int((m.weight == 0).sum())
                      for name, m in ours.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_report_flops_match_flop_counter():
    model = small_cnn()
    pruners.prune(model, "uniform", 0.5)
    report = pruners.sparsity_report(model, torch.randn(2, 1, 8, 8)).set_index("layer")
    # conv1: 2 samples * 8*8 outputs * 8 channels * 9 taps * 2 FLOPs per MAC
    assert report.loc["0.weight", "flops"] == 2 * 64 * 8 * 9 * 2
    assert report.loc["0.weight", "kept_flops"] == pytest.approx(report.loc["0.weight", "flops"] / 2,
                                                                  rel=0.02)
    no_input = pruners.sparsity_report(model)
    assert no_input["flops"].isna().all()


def test_make_permanent_and_mask_file_roundtrip(tmp_path):
    model = small_cnn()
    masks = pruners.prune(model, "global_magnitude", 0.7)
    pruners.save_masks(tmp_path / "m.safetensors", masks)
    loaded = pruners.load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    fresh = small_cnn()
    pruners.apply_masks(fresh, loaded)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(fresh(x), model(x))
    pruners.make_permanent(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert not torch_prune.is_pruned(model)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in conv_linear(model))
    assert zeros == pruned_total(masks)
    assert torch.allclose(model(x), fresh(x))
    with pytest.raises(CheckpointError):
        pruners.load_masks(tmp_path / "missing.safetensors")


def test_selection_first_last_types_and_globs():
    model = small_cnn()
    names = [t.name for t in pruners.select_targets(model, prune_first=False, prune_last=False)]
    assert names == ["2.weight", "6.weight"]
    names = [t.name for t in pruners.select_targets(model, include_types=["Linear"])]
    assert names == ["6.weight", "8.weight"]
    names = [t.name for t in pruners.select_targets(model, exclude=["[02]"])]
    assert names == ["6.weight", "8.weight"]
    masks = pruners.prune(model, "global_magnitude", 0.5, include=["6"])
    assert list(masks) == ["6.weight"]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: pruners.prune(m, "global_magnitude", 1.0), "outside [0, 1)"),
        (lambda m: pruners.prune(m, "global_magnitude", -0.1), "outside [0, 1)"),
        (lambda m: pruners.prune(m, "uniform", 0.5, include=["nope*"]), "matches no prunable"),
        (lambda m: pruners.prune(m, "lamp", 0.5, exclude=["x"]), "matches no prunable"),
        (lambda m: pruners.prune(m, "magic", 0.5), "unknown pruning method"),
        (lambda m: pruners.prune(m, "uniform", 0.5, bogus=1), "no option 'bogus'"),
        (lambda m: pruners.apply_masks(m, {"0.weight": torch.ones(8, 1, 3, 3, dtype=torch.bool),
                                           "2.weight": torch.ones(3, 3, dtype=torch.bool)}),
         "has shape"),
        (lambda m: pruners.apply_masks(m, {"9.weight": torch.ones(1, dtype=torch.bool)}),
         "names no"),
    ],
)
def test_bad_input_leaves_model_untouched(call, message):
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        call(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not torch_prune.is_pruned(model)


def test_get_masks_is_a_snapshot_that_later_pruning_leaves_alone():
    model = small_cnn()
    n = sum(m.weight.numel() for m, _ in conv_linear(model))
    first = pruners.get_masks(pruners.prune(model, "global_magnitude", 0.5) and model)
    pruners.prune(model, "global_magnitude", 0.8)
    assert pruned_total(first) == round(0.5 * n)
    assert pruned_total(pruners.get_masks(model)) == round(0.8 * n)


def test_sparsity_only_grows():
    model = small_cnn()
    pruners.prune(model, "global_magnitude", 0.5)
    with pytest.raises(UserError, match="masks only grow"):
        pruners.prune(model, "global_magnitude", 0.3)
    old = pruners.get_masks(model)
    new = pruners.prune(model, "lamp", 0.8)
    assert all(not (new[k] & ~old[k]).any() for k in old)


def test_ties_are_pruned_in_layer_then_flat_order():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    masks = pruners.prune(model, "global_magnitude", 0.7)  # 7 of 10 pruned, all tied
    assert masks["0.weight"].flatten().tolist() == [False] * 6
    assert masks["1.weight"].flatten().tolist() == [False, True, True, True]


def test_min_keep_prevents_layer_collapse():
    model = small_cnn()
    with torch.no_grad():
        model[8].weight.mul_(1e-3)  # the classifier would be pruned away first
    masks = pruners.prune(model, "global_magnitude", 0.9, min_keep=50)
    assert int(masks["8.weight"].sum()) == 50
    assert all(int(m.sum()) >= 50 for m in masks.values())
    n = sum(m.numel() for m in masks.values())
    assert pruned_total(masks) == round(0.9 * n)
    plain = pruners.prune(small_cnn(), "global_magnitude", 0.9)
    assert pruned_total(plain) == pruned_total(masks)
    with pytest.raises(UserError, match="min_keep"):
        pruners.prune(small_cnn(), "global_magnitude", 0.9, min_keep=10_000)


def test_gradual_follows_cubic_schedule():
    schedule = pruners.cubic_schedule(0.9, 4)
    assert schedule[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(schedule, schedule[1:], strict=False))
    seen = []

    def finetune(model, span, keep_masks):
        masks = pruners.get_masks(model)
        seen.append(sum(int((~m).sum()) for m in masks.values()))
        keep_masks()

    model = small_cnn()
    n = sum(m.weight.numel() for m, _ in conv_linear(model))
    masks = pruners.prune(model, "gradual_magnitude", 0.9, steps=4, finetune=finetune)
    assert seen == [round(s * n) for s in schedule]
    assert pruned_total(masks) == round(0.9 * n)


def test_uniform_plus_and_erk_allocations():
    model = small_cnn()
    masks = pruners.prune(model, "uniform_plus", 0.9)
    assert masks["0.weight"].all()
    assert masks["8.weight"].float().mean() >= 0.2
    dens = erk_densities([torch.Size([10, 100]), torch.Size([100, 100])], 0.1)
    kept = dens[0] * 1000 + dens[1] * 10000
    assert kept == pytest.approx(1100)
    assert dens[0] / dens[1] == pytest.approx((110 / 1000) / (200 / 10000))


def test_largest_remainder_is_exact():
    assert largest_remainder([1.5, 1.5, 1.0], 4, [5, 5, 5]) == [2, 1, 1]
    assert sum(largest_remainder([0.3] * 10, 3, [1] * 10)) == 3


def test_lamp_scores_rank_within_layer():
    model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        model[1].weight.fill_(0.01)  # tiny, but the only weight of its layer: LAMP score 1
    masks = pruners.prune(model, "lamp", 0.4)
    assert masks["1.weight"].all()
    assert masks["0.weight"].tolist() == [[False, False, True, True]]
