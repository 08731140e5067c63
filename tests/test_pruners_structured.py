"""Structured pruning: the shrunk model is the masked model made small, channel choice matches
Torch-Pruning's own importance and a brute-force tie order, counts are exact, the DP is optimal,
and the result exports to a smaller ONNX; also for a subnet extracted from a supernet."""

from __future__ import annotations

import io
import itertools
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import pruners
import supernets
from pruners.shrink_dp import group_distortion_curves
from pruners.structured import dependency_graph

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def resnet18(seed: int = 0) -> nn.Module:
    """A ResNet-18 with random BN statistics and affine terms, so a BN left unhandled shows."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def tiny_cnn(seed: int = 0, quantised: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    if quantised:  # heavy ties: weights in {-1, 0, 1}, 90% zeros, so channel scores are small integers
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((torch.rand(p.shape) < 0.1).float() * (torch.randint(0, 2, p.shape) * 2 - 1))
    return model.eval()


def zero_plan(model: nn.Module, plan: pruners.ChannelPlan) -> nn.Module:
    """The masked counterpart of a plan: every module that outputs a removed channel has that
    channel's weights, bias and (for BN) scale and shift set to 0, so it outputs exact zeros."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group, removed in zip(plan.groups, plan.removed, strict=True):
            for name, per_root in group.outputs.items():
                idx = [i for r in removed for i in per_root[r]]
                m = modules[name]
                dim = 1 if getattr(m, "transposed", False) else 0
                m.weight.index_fill_(dim, torch.tensor(idx, dtype=torch.long), 0.0)
                if m.bias is not None:
                    m.bias[idx] = 0.0
    return model


def onnx_size_and_outputs(model: nn.Module, x: torch.Tensor) -> tuple[int, np.ndarray]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["input"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return len(buf.getvalue()), session.run(None, {"input": x.numpy()})[0]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


DP_KW = {"num_samples": 8, "num_amounts": 5}


@pytest.fixture(scope="module")
def dense_onnx_size() -> int:
    return onnx_size_and_outputs(resnet18(), X)[0]


@pytest.mark.parametrize("method", ["uniform", "global_magnitude", "layer_dp"])
def test_shrunk_resnet_equals_masked_model_and_onnx_is_smaller(method, dense_onnx_size):
    dense = resnet18()
    kwargs = DP_KW if method == "layer_dp" else {}
    small, plan = pruners.structured.shrink_with_plan(dense, method, 0.5, example_input=X[:1], **kwargs)
    assert plan.pruned == round(0.5 * plan.channels)
    masked = zero_plan(resnet18(), plan)
    with torch.no_grad():
        got, want, orig = small(X), masked(X), dense(X)
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, orig, atol=1e-3)  # something was really removed
    assert params(small) < 0.35 * params(dense)
    size_small, ort_out = onnx_size_and_outputs(small, X)
    assert size_small < 0.35 * dense_onnx_size
    np.testing.assert_allclose(ort_out, got.numpy(), rtol=1e-4, atol=1e-4)


def test_channel_choice_matches_torch_pruning_magnitude_pruner():
    """Uniform L1 at 50% = Torch-Pruning's MagnitudePruner with summed L1 group importance
    (continuous weights: no ties, whose order torch.topk leaves unspecified)."""
    for p, importance in ((1, "l1"), (2, "l2")):
        ours = pruners.shrink(resnet18(), "uniform", 0.5, example_input=X[:1], importance=importance)
        ref = resnet18()
        pruner = tp.pruner.MagnitudePruner(
            ref, X[:1], importance=tp.importance.MagnitudeImportance(p=p, group_reduction="sum",
                                                                     normalizer=None),
            pruning_ratio=0.5, ignored_layers=[ref.fc])
        pruner.step()
        expected = ref.state_dict()
        assert ours.state_dict().keys() == expected.keys()
        for key, value in ours.state_dict().items():
            assert torch.equal(value, expected[key]), (importance, key)


def test_group_scores_equal_torch_pruning_importance():
    model = resnet18()
    DG = dependency_graph(model, X[:1])
    imp = tp.importance.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
    ref = {DG._module2name[g[0].dep.target.module]: imp(g) for g in DG.get_all_groups()}
    groups = pruners.structured.channel_groups(model, DG, "l1")
    assert len(groups) == len(ref) - 1  # every group but the classifier's
    for g in groups:
        torch.testing.assert_close(g.scores, ref[g.root].float(), rtol=1e-5, atol=0)


def test_ties_go_to_the_lower_channel_index_by_brute_force():
    """Quantised weights: group L1 scores computed by hand, the plan removes the lexicographically
    first (score, index) channels of each group."""
    ties_at_the_cut = 0
    for seed in range(8):
        model = tiny_cnn(seed, quantised=True)
        x = torch.randn(1, 1, 8, 8)
        plan = pruners.plan_channels(model, "uniform", 0.5, example_input=x, importance="l1")
        c1, b1, c2, b2, fc = model[0], model[1], model[3], model[4], model[8]
        by_hand = {
            "0": c1.weight.abs().sum((1, 2, 3)) + b1.weight.abs() + c2.weight.abs().sum((0, 2, 3)),
            "3": c2.weight.abs().sum((1, 2, 3)) + b2.weight.abs() + fc.weight.abs().sum(0),
        }
        assert sorted(g.root for g in plan.groups) == ["0", "3"]
        for g, removed in zip(plan.groups, plan.removed, strict=True):
            s = by_hand[g.root].tolist()
            ranked = sorted(range(len(s)), key=lambda i: (s[i], i))
            ties_at_the_cut += s[ranked[len(removed) - 1]] == s[ranked[len(removed)]]
            assert removed == sorted(ranked[: len(removed)]), (seed, g.root, s)
    assert ties_at_the_cut >= 4  # the order of tied channels really decided the cut


def test_global_magnitude_exact_count_min_keep_and_normalised_ranking():
    model = tiny_cnn(0)
    x = torch.randn(1, 1, 8, 8)
    plan = pruners.plan_channels(model, "global_magnitude", 0.7, example_input=x, min_keep=2)
    assert plan.channels == 14 and plan.pruned == round(0.7 * 14) == 10
    assert all(g.channels - len(r) >= 2 for g, r in zip(plan.groups, plan.removed, strict=True))
    # below the caps, the removed channels are exactly the lowest mean-normalised scores
    plan = pruners.plan_channels(model, "global_magnitude", 0.4, example_input=x)
    norm = [(float(s / g.scores.mean()), gi, i) for gi, g in enumerate(plan.groups)
            for i, s in enumerate(g.scores)]
    lowest = sorted(norm)[: plan.pruned]
    assert sorted((gi, i) for _, gi, i in lowest) == sorted(
        (gi, i) for gi, r in enumerate(plan.removed) for i in r)


def test_structured_layer_dp_is_the_optimal_allocation_of_its_curves():
    """With every count on the grid, the DP's counts minimise Σ D_g over all allocations that
    remove exactly n channels (brute force); the uniform allocation is not always optimal."""
    model = tiny_cnn(3)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_samples": 16, "num_amounts": 25, "batch_size": 16}  # 24 = lcm of 8 and 6: every count
    plan = pruners.plan_channels(model, "layer_dp", 0.5, example_input=x[:1], data=x, **kw)
    sizes = [g.channels for g in plan.groups]
    curves = [group_distortion_curves(model, [g], x, np.arange(s)[None, :], 16)[0]
              for g, s in zip(plan.groups, sizes, strict=True)]  # counts 0..C-1 (min_keep=1)
    n = plan.pruned
    best = min(sum(curves[i][c[i]] for i in range(len(sizes)))
               for c in itertools.product(*(range(s) for s in sizes)) if sum(c) == n)
    got = sum(curves[i][len(r)] for i, r in enumerate(plan.removed))
    assert got == pytest.approx(best, rel=1e-9, abs=1e-12)
    uniform = pruners.plan_channels(model, "uniform", 0.5, example_input=x[:1])
    assert sum(curves[i][len(r)] for i, r in enumerate(uniform.removed)) > got


def test_subnet_extracted_from_a_supernet_shrinks_and_exports(tmp_path):
    from nasbench.onnx_export import export_onnx

    net = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)
    sub = net.extract(net.space.sample(0)).eval()
    x = torch.randn(2, 1, 32, 32)
    small, plan = pruners.structured.shrink_with_plan(sub, "global_magnitude", 0.4, example_input=x[:1])
    assert plan.pruned == round(0.4 * plan.channels) > 0
    with torch.no_grad():
        torch.testing.assert_close(small(x), zero_plan(net.extract(net.space.sample(0)).eval(), plan)(x),
                                   rtol=1e-4, atol=1e-5)
    assert params(small) < params(sub)
    assert export_onnx(small, (1, 32, 32), tmp_path / "s.onnx").max_abs_diff < 1e-4


def test_plan_json_replays_on_a_fresh_model():
    small, plan = pruners.structured.shrink_with_plan(resnet18(), "global_magnitude", 0.3,
                                                      example_input=X[:1])
    replay = pruners.apply_plan(resnet18(), json.loads(json.dumps(plan.to_json())), example_input=X[:1])
    expected = small.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in replay.state_dict().items())


def test_shrink_leaves_the_input_alone_and_bakes_in_masks():
    model = tiny_cnn(0)
    pruners.prune(model, "global_magnitude", 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = pruners.shrink(model, "uniform", 0.5, example_input=torch.randn(1, 1, 8, 8))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(name.endswith("_orig") for name, _ in small.named_parameters())


def test_list_pruners_by_kind():
    assert pruners.list_pruners(kind="structured") == ["global_magnitude", "layer_dp", "uniform"]
    assert "n_m" in pruners.list_pruners(kind="semi_structured")
    assert "n_m" not in pruners.list_pruners()
    with pytest.raises(pruners.PruneError, match="unknown pruner kind 'dense'"):
        pruners.list_pruners(kind="dense")


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, x: pruners.shrink(m, "magic", 0.5, example_input=x),
     "unknown structured pruning method 'magic'"),
    (lambda m, x: pruners.shrink(m, "uniform", 1.0, example_input=x), "amount=1.0"),
    (lambda m, x: pruners.shrink(m, "uniform", 0.5, example_input=x, ignore=["nope*"]),
     "ignore pattern 'nope*' matches no module"),
    (lambda m, x: pruners.shrink(m, "uniform", 0.5, example_input=x, data=x),
     "uses no calibration data"),
    (lambda m, x: pruners.shrink(m, "uniform", 0.5, example_input=x, importance="l3"),
     "importance='l3'"),
    (lambda m, x: pruners.shrink(m, "uniform", 0.99, example_input=x, min_keep=3),
     "cannot remove 14 of 14 channels keeping min_keep=3"),
])
def test_bad_requests_are_one_line_errors(call, message):
    with pytest.raises(pruners.PruneError, match=message.replace("(", r"\(").replace("*", r"\*")):
        call(tiny_cnn(0), torch.randn(1, 1, 8, 8))


def test_ignore_keeps_a_layers_channels():
    x = torch.randn(1, 1, 8, 8)
    plan = pruners.plan_channels(tiny_cnn(0), "uniform", 0.5, example_input=x, ignore=["0"])
    assert [g.root for g in plan.groups] == ["3"]


CONFIG = """
run: {{name: s, root: {root}}}
data: {{name: digits, resolution: 16, channels: 1, batch_size: 64, limit: 128}}
model: {{source: timm, name: test_resnet}}
prune: {{method: {method}, sparsity: 0.5}}
finetune: {{epochs: 1}}
"""


@pytest.mark.slow
def test_cli_structured_run_measures_dense_and_shrunk(cli, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "results", method="global_magnitude"))
    res = cli("prune", str(cfg), "--set", "prune.kind=structured")
    assert res.code == 0, res.err
    run = tmp_path / "results" / "s"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kind"] == "structured" and summary["channel_fraction"] == 0.5
    dense, shrunk = summary["measured"]["dense"], summary["measured"]["shrunk"]
    assert shrunk["params"] < dense["params"] and shrunk["onnx_bytes"] < dense["onnx_bytes"]
    assert summary["onnx_max_abs_diff"] < 1e-4
    assert "(measured, 1 thread)" in res.out and "(counted)" in res.out
    replay = pruners.apply_plan(_test_resnet(), json.loads(
        (run / "channels.json").read_text()), example_input=torch.zeros(1, 1, 16, 16))
    assert params(replay) == shrunk["params"]


def _test_resnet() -> nn.Module:
    import timm

    return timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)


@pytest.mark.parametrize(("sets", "message"), [
    (["prune.method=magic"], "unknown structured pruning method 'magic'"),
    (["prune.kwargs.importance=l3"], "prune.kwargs: structured pruning method 'global_magnitude': importance='l3'"),
    (["prune.kwargs.data=x"], "prune.kwargs.data: 'global_magnitude' gets 'data' from the runner"),
    (["prune.kwargs.ignore=[nope]"], "ignore pattern 'nope' matches no module"),
    (["prune.sparsity=0.99", "prune.kwargs.min_keep=4"], "channels keeping min_keep=4 per group"),
])
def test_cli_structured_mistakes_exit_2_before_the_run_dir(cli, tmp_path, sets, message):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "results", method="global_magnitude"))
    res = cli("prune", str(cfg), "--set", "prune.kind=structured", *[a for s in sets for a in ("--set", s)])
    assert res.code == 2 and message in res.err, res.err
    assert not (tmp_path / "results" / "s").exists()
