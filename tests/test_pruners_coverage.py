"""Pruners beyond plain fp32 CNNs: attention weights that keep training, float64/bf16 and
channels_last models, uniform+'s first-layer rule, exact tie order (against a stable-sort
brute force and torch's own pruning), gradual's fine-tuning and checks before any work."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

import cuda_ext
import pruners
from nasbench_core.errors import UserError

MINE = ["global_magnitude", "gradual_magnitude", "uniform", "uniform_plus", "erk", "lamp", "random"]
NO_FINETUNE = {"gradual_magnitude": {"steps": 3}}


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def lenet_300_100(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def quantise(model: nn.Module, step: float = 0.05, levels: int = 1) -> nn.Module:
    """Every prunable weight on the grid {-levels..levels}·step shared by all layers: most
    weights tie with weights of other layers, so tie order decides the masks."""
    with torch.no_grad():
        for t in pruners.select_targets(model):
            t.param.copy_((t.param / step).round().clamp(-levels, levels) * step)
    return model


def pruned_total(masks) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def stable_sort_oracle(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Brute force of the documented rule: the k smallest |w| of the concatenation, ties in
    layer order then flattened (logical) index order, i.e. a stable ascending sort."""
    flat = torch.cat([t.detach().reshape(-1).abs().double() for t in tensors])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    out, start = [], 0
    for t in tensors:
        out.append(keep[start:start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


def train_steps(model: nn.Module, make_input, steps: int = 3):
    """SGD with momentum and weight decay (both move pruned `weight_orig` without a keeper);
    returns the gradient of every `_orig` parameter at each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    pruners.MaskKeeper(model).attach(opt)
    grads = []
    for i in range(steps):
        opt.zero_grad()
        out = model(make_input(i))
        (out[0] if isinstance(out, tuple) else out).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if n.endswith("_orig")})
        opt.step()
    return grads


# --- attention -----------------------------------------------------------------------------

def check_attention_keeps_training(model: nn.Module, make_input, expected: list[str]) -> None:
    targets = [t.name for t in pruners.select_targets(model)]
    assert all(name in targets for name in expected), targets
    masks = pruners.prune(model, "global_magnitude", 0.5)
    before = {t.name: t.param.detach().clone() for t in pruners.select_targets(model)}
    for grads in train_steps(model, make_input):
        for name in expected:
            grad = grads[name + "_orig"]
            assert grad is not None, f"{name}: no gradient reaches weight_orig"
            assert grad.abs().sum() > 0, name
            assert not grad[~masks[name]].any(), name  # weight = orig * mask: no grad where pruned
    for t in pruners.select_targets(model):
        mask = masks[t.name]
        assert not t.param[~mask].any() and not getattr(t.module, t.attr)[~mask].any(), t.name
        moved = (t.param[mask] != before[t.name][mask]).float().mean()
        assert moved > 0.9, (t.name, float(moved))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # one last step with no keeper: only the
    model(make_input(7)).square().mean().backward()    # pruning hooks refresh `weight` now
    opt.step()
    model.eval()
    x = make_input(99)
    with torch.no_grad():  # eval + no_grad: the fused inference paths, which read weights directly
        fused = model(x)
    composite = model(x)  # grad on: the module-by-module path, where every pruning hook runs
    assert torch.allclose(fused, composite, atol=1e-5)


def test_attention_weights_of_an_encoder_layer_are_pruned_and_keep_training():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    check_attention_keeps_training(
        layer, lambda i: torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(i)),
        ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight"])


def test_attention_weights_of_a_tiny_torchvision_vit_are_pruned_and_keep_training():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3, dropout=0.0)
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-inits the head: no gradient upstream
    attn = "encoder.layers.encoder_layer_1.self_attention"
    check_attention_keeps_training(
        vit, lambda i: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)),
        [f"{attn}.in_proj_weight", f"{attn}.out_proj.weight", "conv_proj.weight"])


def test_separate_query_key_value_projections_are_selected_and_train():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 4, 8)
    v = torch.randn(2, 4, 12)
    names = [t.name for t in pruners.select_targets(mha)]
    assert names == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    pruners.prune(mha, "uniform", 0.5)
    mha(q, kv, v)[0].square().sum().backward()
    assert all(mha.get_parameter(n + "_orig").grad.abs().sum() > 0 for n in names)
    report = pruners.sparsity_report(mha, (q, kv, v)).set_index("layer")
    assert report.loc["k_proj_weight", "flops"] == 2 * (2 * 4) * 16 * 8
    assert report.loc["out_proj.weight", "flops"] == 2 * (2 * 3) * 16 * 16
    assert (report["sparsity"].iloc[:-1] == 0.5).all()


def test_report_counts_attention_projection_flops_and_make_permanent_unhooks():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    pruners.prune(layer, "uniform", 0.5)
    x = torch.randn(4, 5, 16)
    report = pruners.sparsity_report(layer, x).set_index("layer")
    rows = 4 * 5
    assert report.loc["self_attn.in_proj_weight", "flops"] == 2 * rows * 3 * 16 * 16
    assert report.loc["self_attn.out_proj.weight", "flops"] == 2 * rows * 16 * 16
    assert report.loc["linear1.weight", "flops"] == 2 * rows * 16 * 32
    layers = report.drop(index="__global__")
    assert report.loc["__global__", "flops"] >= layers["flops"].sum()  # counted, attention fused or not
    pruners.make_permanent(layer)
    assert not any(isinstance(h, pruners.masks.RefreshPruned)
                   for m in layer.modules() for h in m._forward_pre_hooks.values())
    assert not torch_prune.is_pruned(layer)


# --- dtypes and memory formats --------------------------------------------------------------

@pytest.fixture(params=["torch", "cpp"])
def backend(request, monkeypatch):
    """cuda_ext's PyTorch fallback, then its compiled CPU kernels (skipped if not built)."""
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "0" if request.param == "torch" else "auto")
    if cuda_ext.backend() != request.param:
        pytest.skip(f"cuda_ext backend {request.param!r} is not available here")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("method", MINE)
def test_float64_and_bf16_models_get_the_masks_of_their_exact_fp32_copy(method, dtype, backend):
    """Weights made in the dtype and widened exactly to fp32 rank the same way, so the masks
    must be the fp32 ones (float64 takes pruners' own exact path, bf16 cuda_ext's, on either
    of its backends)."""
    low = quantise(small_cnn(), step=0.02, levels=3).to(dtype)  # ties too
    ref = copy.deepcopy(low).float()
    n = sum(t.numel for t in pruners.select_targets(low))
    masks = pruners.prune(low, method, 0.7, **NO_FINETUNE.get(method, {}))
    expected = pruners.prune(ref, method, 0.7, **NO_FINETUNE.get(method, {}))
    assert pruned_total(masks) == round(0.7 * n)
    assert all(torch.equal(masks[k], expected[k]) for k in expected), method
    x = torch.randn(2, 1, 8, 8, dtype=dtype)
    assert train_steps(low, lambda i: x, steps=1)
    assert all(not t.param[~masks[t.name]].any() for t in pruners.select_targets(low))
    assert low(x).dtype == dtype
    permanent = quantise(small_cnn(), step=0.02, levels=3).to(dtype)
    counts = pruners.prune_permanent(permanent, method, 0.7, **NO_FINETUNE.get(method, {}))
    assert sum(counts.values()) == round(0.7 * n)


def test_float64_global_magnitude_matches_global_unstructured_without_ties():
    """float64 distinctions finer than fp32 must count (an fp32 ranking would tie them)."""
    model = small_cnn().double()
    with torch.no_grad():
        for t in pruners.select_targets(model):
            t.param.copy_(1.0 + torch.rand(t.param.shape, dtype=torch.float64) * 1e-9)
    ref = copy.deepcopy(model)
    masks = pruners.prune(model, "global_magnitude", 0.6)
    torch_prune.global_unstructured([(t.module, "weight") for t in pruners.select_targets(ref)],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.6)
    for name, buf in ref.named_buffers():
        if name.endswith("_mask"):
            assert torch.equal(masks[name[:-5]], buf.bool()), name


@pytest.mark.parametrize("method", MINE)
def test_channels_last_models_get_the_masks_of_the_contiguous_model(method):
    """Tie order is the logical (NCHW) flattened index, whatever the memory layout."""
    plain = quantise(small_cnn(), step=0.05, levels=2)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert cl[2].weight.is_contiguous(memory_format=torch.channels_last)
    expected = pruners.prune(plain, method, 0.6, **NO_FINETUNE.get(method, {}))
    masks = pruners.prune(cl, method, 0.6, **NO_FINETUNE.get(method, {}))
    assert all(torch.equal(masks[k], expected[k]) for k in expected), method
    x = torch.randn(2, 1, 8, 8).to(memory_format=torch.channels_last)
    train_steps(cl, lambda i: x, steps=1)
    assert all(not t.param[~masks[t.name]].any() for t in pruners.select_targets(cl))


# --- uniform+ ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
def test_uniform_plus_prunes_a_linear_first_layer(sparsity):
    """LeNet-300-100's first Linear holds 88% of the weights; the reference keeps only a conv
    first layer dense, so the MLP is pruned uniformly (the last layer keeps >= 20%)."""
    model = lenet_300_100()
    masks = pruners.prune(model, "uniform_plus", sparsity)
    n = sum(m.numel() for m in masks.values())
    assert pruned_total(masks) == round(sparsity * n)
    first = 1 - masks["1.weight"].float().mean()
    assert first == pytest.approx(max(sparsity, 0.0), abs=0.02)
    assert masks["5.weight"].float().mean() >= 0.2 - 1e-9


def test_uniform_plus_keeps_a_conv_first_layer_dense_and_says_when_it_cannot_reach_k():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    masks = pruners.prune(copy.deepcopy(model), "uniform_plus", 0.5)
    assert masks["0.weight"].all()
    with pytest.raises(UserError, match=r"uniform_plus keeps the first \(conv\) layer dense"):
        pruners.prune(model, "uniform_plus", 0.85)
    assert not torch_prune.is_pruned(model)


# --- ties ---------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
def test_global_ties_follow_layer_then_index_order_and_agree_with_torch_off_the_tie(levels, sparsity):
    """Heavily quantised weights ({-1,0,1}·q or 5 levels, shared by all layers): our masks equal
    the stable-sort brute force exactly; torch's global_unstructured prunes the same number, the
    same weights below the threshold and keeps the same above it; which tied weights it takes
    is whatever torch.topk returns (README: "Ties")."""
    model = quantise(torchvision.models.mobilenet_v3_small(), step=0.05, levels=levels)
    ref = copy.deepcopy(model)
    targets = pruners.select_targets(model)
    k = round(sparsity * sum(t.numel for t in targets))
    oracle = stable_sort_oracle([t.param for t in targets], k)
    masks = pruners.prune(model, "global_magnitude", sparsity)
    assert all(torch.equal(masks[t.name], m) for t, m in zip(targets, oracle, strict=True))
    torch_prune.global_unstructured([(t.module, "weight") for t in pruners.select_targets(ref)],
                                    pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    theirs = {n[:-5]: b.bool() for n, b in ref.named_buffers() if n.endswith("_mask")}
    assert pruned_total(theirs) == pruned_total(masks) == k
    threshold = torch.cat([t.param.detach().abs().flatten() for t in targets]).kthvalue(k).values
    for t in targets:
        w = t.param.detach().abs()
        assert not masks[t.name][w < threshold].any() and not theirs[t.name][w < threshold].any()
        assert masks[t.name][w > threshold].all() and theirs[t.name][w > threshold].all()


@pytest.mark.parametrize("method", ["uniform", "erk", "uniform_plus"])
def test_layerwise_ties_follow_index_order_and_match_l1_unstructured_counts(method):
    """Per-layer pruners against torch's l1_unstructured at our per-layer counts: equal counts,
    equal below/above-threshold sets; among ties ours are the first by flattened index."""
    model = quantise(small_cnn(), step=0.05, levels=1)
    ref = copy.deepcopy(model)
    masks = pruners.prune(model, method, 0.6)
    for t, r in zip(pruners.select_targets(model), pruners.select_targets(ref), strict=True):
        count = int((~masks[t.name]).sum())
        assert torch.equal(masks[t.name], stable_sort_oracle([t.param], count)[0]), t.name
        torch_prune.l1_unstructured(r.module, "weight", amount=count)
        theirs = r.module.weight_mask.bool()
        assert int((~theirs).sum()) == count
        if count:
            w = t.param.detach().abs()
            thr = w.flatten().kthvalue(count).values
            assert torch.equal(masks[t.name][w != thr], theirs[w != thr]), t.name


# --- checks before any work ----------------------------------------------------------------

@pytest.mark.parametrize(("method", "kwargs", "needle"), [
    ("global_magnitude", {"min_keep": 10_000}, "min_keep keeps"),
    ("gradual_magnitude", {"min_keep": 0.5}, "min_keep keeps"),
    ("uniform_plus", {"last_keep": 1.0}, "uniform_plus keeps"),
    ("uniform", {"include": "0"}, "include='0' must be a list"),
    ("lamp", {"prune_first": "no"}, "prune_first='no' must be true or false"),
    ("gradual_magnitude", {"finetune_steps": "3 epochs"}, "finetune_steps='3 epochs'"),
])
def test_check_prune_refuses_what_the_method_cannot_do_before_any_weight_changes(method, kwargs, needle):
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (pruners.check_prune, pruners.prune):
        with pytest.raises(UserError, match=needle.replace("(", r"\(")):
            call(model, method, 0.9, **kwargs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch_prune.is_pruned(model)
    pruners.check_prune(model, method, 0.1)  # a request it can do passes, touching nothing
    assert not torch_prune.is_pruned(model)


# --- gradual fine-tuning ------------------------------------------------------------------

def test_gradual_fine_tunes_each_step_for_its_span_and_without_it_equals_one_shot():
    seen = []

    def finetune(model, span, keep_masks):  # a real change of weights between steps
        seen.append(span)
        with torch.no_grad():
            for t in pruners.select_targets(model):
                t.param.add_(torch.randn(t.param.shape, generator=gen) * 0.05)
        keep_masks()

    gen = torch.Generator().manual_seed(0)
    tuned = pruners.prune(small_cnn(), "gradual_magnitude", 0.8, steps=3, finetune=finetune,
                          finetune_steps="7it")
    assert seen == [pruners.Span(7, "it")] * 3
    one_shot = pruners.prune(small_cnn(), "global_magnitude", 0.8)
    assert any(not torch.equal(tuned[k], one_shot[k]) for k in one_shot)
    seen.clear()
    untuned = pruners.prune(small_cnn(), "gradual_magnitude", 0.8, steps=3, finetune=finetune,
                            finetune_steps="0it")
    assert seen == []
    assert all(torch.equal(untuned[k], one_shot[k]) for k in one_shot)


def test_gradual_through_the_runner_fine_tunes_between_steps(tmp_path):
    """From a config: `finetune_steps` of the runner's training after every step (a metrics
    row per step), so the masks differ from one-shot pruning; `0it` gives one-shot's."""
    import nasbench
    from pruners import load_masks

    def run(name, method, kwargs):
        out = nasbench.prune({"run": {"name": name, "root": tmp_path},
                              "data": {"name": "digits", "resolution": 16, "channels": 1, "limit": 128},
                              "model": {"source": "timm", "name": "test_resnet"},
                              "prune": {"method": method, "sparsity": 0.6, "kwargs": kwargs},
                              "finetune": {"epochs": 0}, "onnx": False}, quiet=True)
        return out, load_masks(out.path / "masks.safetensors")

    tuned_run, tuned = run("g", "gradual_magnitude", {"steps": 2, "finetune_steps": "3it"})
    assert list(tuned_run.metrics["stage"]) == ["dense", "level_1", "level_2", "pruned"]
    _, one_shot = run("o", "global_magnitude", {})
    _, untuned = run("u", "gradual_magnitude", {"steps": 2, "finetune_steps": "0it"})
    assert any(not torch.equal(tuned[k], one_shot[k]) for k in one_shot)
    assert all(torch.equal(untuned[k], one_shot[k]) for k in one_shot)


def test_an_existing_run_directory_names_resume_only_where_it_exists(tmp_path):
    from nasbench.errors import RunError
    from nasbench.runs import start_run

    for command, hint in [("export", None), ("train", ""), ("prune", " (a lottery run)")]:
        (tmp_path / command).mkdir()
        with pytest.raises(RunError) as info, start_run(command, {}, 0, root=tmp_path, name=command):
            pass
        text = str(info.value)
        assert "choose another run.name" in text
        assert ("--resume" in text) == (hint is not None)
        if hint:
            assert text.endswith(f"to continue it{hint}")


def test_only_an_attention_whose_out_proj_is_pruned_gets_the_refresh_hook():
    """A hook disables torch's fused encoder fast path, so unpruned attention stays hook-free."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def hooked() -> bool:
        return any(isinstance(h, pruners.masks.RefreshPruned) for h in layer.self_attn._forward_pre_hooks.values())

    pruners.prune(layer, "uniform", 0.5, include=["linear1"])
    assert not hooked()
    pruners.prune(layer, "uniform", 0.5, include=["self_attn.out_proj"])
    assert hooked()
    twin = copy.deepcopy(layer)  # the hook is a plain object: copies keep training out_proj
    twin(torch.randn(2, 3, 16)).square().sum().backward()
    assert twin.self_attn.out_proj.weight_orig.grad.abs().sum() > 0
