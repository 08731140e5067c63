"""Mixture-of-supernets: routing maths, folding into extracted subnets, config errors, training."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import CheckpointError, ConfigError
from nasbench_core.seeding import torch_generator
from supernets.checkpoint import load_checkpoint, load_supernet, save_checkpoint
from supernets.mos import (
    MoSDynamicConv2d,
    MoSDynamicLinear,
    apply_mos,
    mixture_overhead,
    mos_layers,
)
from supernets.train import TrainHParams, train_supernet
from supernets.training.optim import build_optimizer

# Every family with MoS-eligible layers; resnet needs bottleneck blocks for its 1x1 convs.
FAMILIES = {
    "vit": {},
    "mbv3": {},
    "resnet": {"block": "bottleneck"},
}



def make(family: str, mos: dict | None = None, seed: int = 0) -> supernets.Supernet:
    torch.manual_seed(seed)
    return supernets.create(family, preset="tiny", num_classes=10, in_chans=1, mos=mos,
                            **FAMILIES[family])


def randomise_routers(net: nn.Module, seed: int = 0) -> None:
    """Give routers non-zero last layers so α is far from uniform and differs between archs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in mos_layers(net).values():
            for p in layer.router.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def batch(arch: dict, n: int = 3, seed: int = 0) -> torch.Tensor:
    res = int(arch.get("resolution", 32))
    return torch.randn(n, 1, res, res, generator=torch.Generator().manual_seed(seed))


# -- routing maths ----------------------------------------------------------------------------
@pytest.mark.parametrize("routing", ["layer", "neuron"])
def test_linear_mixture_matches_formula(routing):
    layer = MoSDynamicLinear(6, 8, routing=routing, experts=3, d_arch=4, router_hidden=16)
    randomise_routers(nn.ModuleDict({"l": layer}))
    layer.set_active(5, 4)
    layer.on_set_active({}, torch.rand(4))
    alpha = layer.mixing_coefficients()
    experts = layer.weight.detach()[:, :5, :4]  # (m, out, in)
    biases = layer.bias.detach()[:, :5]
    if routing == "layer":
        assert alpha.shape == (3,)
        want_w = sum(alpha[i] * experts[i] for i in range(3))
        want_b = sum(alpha[i] * biases[i] for i in range(3))
    else:
        assert alpha.shape == (5, 3)
        want_w = sum(alpha[:, i : i + 1] * experts[i] for i in range(3))
        want_b = sum(alpha[:, i] * biases[i] for i in range(3))
    torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:-1]))
    torch.testing.assert_close(layer.active_weight(), want_w)
    torch.testing.assert_close(layer.active_bias(), want_b)
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), x @ want_w.T + want_b)


def test_neuron_routing_slices_logits_of_active_rows():
    layer = MoSDynamicLinear(4, 6, routing="neuron", experts=2, d_arch=3, router_hidden=8)
    randomise_routers(nn.ModuleDict({"l": layer}))
    layer.on_set_active({}, torch.rand(3))
    full = layer.mixing_coefficients()
    layer.set_active(2, 4)
    torch.testing.assert_close(layer.mixing_coefficients(), full[:2])


def test_pointwise_conv_mixture_equals_linear_on_channels():
    conv = MoSDynamicConv2d(5, 7, routing="neuron", experts=2, d_arch=3, router_hidden=8)
    randomise_routers(nn.ModuleDict({"c": conv}))
    conv.set_active(6, 4)
    conv.on_set_active({}, torch.rand(3))
    w = conv.active_weight()
    assert w.shape == (6, 4, 1, 1)
    x = torch.randn(2, 4, 3, 3)
    want = torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], x)
    torch.testing.assert_close(conv(x), want)


def test_routing_cache_follows_arch_and_router_changes():
    layer = MoSDynamicLinear(4, 6, routing="neuron", experts=2, d_arch=3, router_hidden=8)
    randomise_routers(nn.ModuleDict({"l": layer}))
    layer.on_set_active({}, torch.zeros(3))
    with torch.no_grad():
        first = layer.active_weight()
        layer.on_set_active({}, torch.ones(3))
        second = layer.active_weight()
        assert not torch.allclose(first, second)
        layer.router.logits.bias.add_(torch.randn(12))
        assert not torch.allclose(layer.active_weight(), second)
    x = torch.randn(2, 4)
    for _ in range(2):  # same arch twice without set_active: each backward has its own graph
        layer(x).sum().backward()
    copy.deepcopy(layer)


def test_one_expert_is_the_plain_layer():
    layer = MoSDynamicLinear(4, 3, routing="layer", experts=1, d_arch=2)
    randomise_routers(nn.ModuleDict({"l": layer}))
    layer.on_set_active({}, torch.rand(2))
    torch.testing.assert_close(layer.active_weight(), layer.weight[0])


# -- supernet families ------------------------------------------------------------------------
@pytest.mark.parametrize("routing", ["layer", "neuron"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_new_mos_supernet_is_function_equal_to_plain(family, routing):
    plain = make(family).eval()
    mos = apply_mos(copy.deepcopy(plain), {"type": routing, "experts": 3}).eval()
    assert mos_layers(mos)
    for seed in range(2):
        arch = plain.space.sample(seed)
        plain.set_active(arch)
        mos.set_active(arch)
        x = batch(arch)
        with torch.no_grad():
            torch.testing.assert_close(mos(x), plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("routing", ["layer", "neuron"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_extraction_folds_mixture(family, routing):
    net = make(family, {"type": routing, "experts": 3}).eval()
    plain = make(family)
    randomise_routers(net)
    for seed in range(4):
        arch = net.space.sample(seed)
        net.set_active(arch)
        sub = net.extract(arch).eval()
        assert not any(isinstance(m, (MoSDynamicLinear, MoSDynamicConv2d))
                       for m in sub.modules())
        x = batch(arch, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x), atol=1e-5, rtol=0)
        n_params = sum(p.numel() for p in sub.parameters())
        assert n_params == net.count_params(arch) == plain.count_params(arch)
        assert n_params == sum(p.numel() for p in plain.extract(arch).parameters())


def test_routing_depends_on_arch():
    net = make("vit", {"type": "layer", "experts": 4})
    randomise_routers(net)
    layer = net.blocks[0].mlp.fc1
    net.set_active(net.space.smallest())
    small = layer.mixing_coefficients()
    net.set_active(net.space.largest())
    assert not torch.allclose(small, layer.mixing_coefficients())


def test_default_layers_per_family():
    assert sorted(mos_layers(make("vit", {"type": "layer", "experts": 2}))) == sorted(
        f"blocks.{i}.mlp.fc{j}" for i in range(4) for j in (1, 2))
    names = mos_layers(make("mbv3", {"type": "neuron", "experts": 2}))
    assert names and all(n.rsplit(".", 1)[1] in ("expand", "project") for n in names)


@pytest.mark.parametrize("family", ["vit", "mbv3"])
@pytest.mark.parametrize("routing", ["layer", "neuron"])
def test_routing_survives_channel_reordering(family, routing):
    """Reordering keeps the largest arch's function: neuron-router rows move with their channel."""
    net = make(family, {"type": routing, "experts": 2}, seed=1).eval()
    randomise_routers(net)
    arch = net.space.largest()
    net.set_active(arch)
    x = batch(arch)
    with torch.no_grad():
        before = net(x)
        net.reorder_channels()
        net.set_active(arch)
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=0)


def test_parameter_overhead_is_counted():
    plain = make("vit")
    net = make("vit", {"type": "layer", "experts": 3, "router_hidden": 16})
    extra = mixture_overhead(net)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert extra["total"] == n_plain + extra["extra_experts"] + extra["routers"]
    fc = sum(p.numel() for n, p in plain.named_parameters() if ".mlp.fc" in n)
    assert extra["extra_experts"] == 2 * fc
    d = len(net.space)
    assert extra["routers"] == 8 * (d * 16 + 16 + 16 * 3 + 3)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mos", "message"),
    [
        ({"type": "layer", "experts": 0}, "mos.experts: expected an integer >= 1, got 0"),
        ({"type": "token", "experts": 2}, "mos.type: expected one of ('layer', 'neuron')"),
        ({"type": "layer", "experts": 2, "layers": ["blocks.*.mlp.fc9"]},
         "mos.layers pattern 'blocks.*.mlp.fc9' matches no DynamicLinear"),
        ({"type": "layer", "experts": 2, "router_hidden": 0},
         "mos.router_hidden: expected an integer >= 1"),
        ({"type": "layer", "experts": 2, "expert": 3}, "unknown key mos.expert"),
    ],
)
def test_bad_config_is_a_clear_error(mos, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make("vit", mos)


def test_non_pointwise_conv_is_refused():
    with pytest.raises(ConfigError, match=r"selects blocks\.0\.dw, a 7x7 depthwise conv"):
        make("mbv3", {"type": "layer", "experts": 2, "layers": ["blocks.*.dw"]})
    with pytest.raises(ConfigError, match=r"blocks\.0\.conv1, a 3x3 conv"):
        supernets.create("resnet", preset="tiny", mos={"type": "layer", "experts": 2})


def test_expert_count_below_one_in_layer_constructor():
    with pytest.raises(ConfigError, match="mos.experts"):
        MoSDynamicLinear(3, 3, experts=0, d_arch=2)


# -- training and checkpoints -----------------------------------------------------------------
def digits_loader(n: int = 64, batch_size: int = 16) -> DataLoader:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch_generator(0))


def test_weight_decay_skips_expert_and_router_biases():
    net = make("vit", {"type": "neuron", "experts": 2})
    opt = build_optimizer(net, TrainHParams(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    layer = net.blocks[0].mlp.fc1
    assert id(layer.weight) in decayed and id(layer.router.hidden.weight) in decayed
    for p in (layer.bias, layer.router.hidden.bias, layer.router.logits.bias):
        assert id(p) not in decayed


@pytest.mark.parametrize("routing", [pytest.param("layer", marks=pytest.mark.slow), "neuron"])
def test_sandwich_training_moves_routers_and_checkpoints_round_trip(tmp_path, routing):
    net = make("mbv3", {"type": routing, "experts": 2})
    routers0 = {n: p.detach().clone() for n, p in net.named_parameters() if ".router." in n}
    cfg = TrainHParams(epochs=1, lr=0.05, warmup_epochs=0.0, num_random=1,
                       max_steps_per_epoch=2, bn_recal_batches=1, val_max_batches=1)
    loader = digits_loader(n=32)
    train_supernet(net, loader, None, cfg, checkpoint_dir=tmp_path)
    moved = [n for n, p in net.named_parameters() if ".router." in n
             and not torch.equal(p.detach(), routers0[n])]
    assert any(n.endswith("router.logits.weight") for n in moved)
    layer = next(iter(mos_layers(net).values()))
    assert layer.mixing_coefficients().std() > 0  # routing left uniform

    rebuilt, meta = load_supernet(tmp_path)
    assert meta["build_config"]["mos"] == {"type": routing, "experts": 2}
    arch = net.space.sample(5)
    for m in (net, rebuilt):
        m.eval()
        m.set_active(arch)
    x = batch(arch)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="holds a mixture-of-supernets but the model is a plain"):
        load_checkpoint(tmp_path, make("mbv3"))


def test_plain_checkpoint_into_mos_net_is_refused(tmp_path):
    save_checkpoint(tmp_path / "epoch_0001", make("vit"), meta={"epoch": 1})
    with pytest.raises(CheckpointError, match="holds a plain supernet but the model is a mixture"):
        load_checkpoint(tmp_path, make("vit", {"type": "layer", "experts": 2}))


# -- export -----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("family", "routing"), [("vit", "neuron"), ("mbv3", "layer")])
def test_extracted_mos_subnet_matches_onnxruntime(tmp_path, family, routing):
    ort = pytest.importorskip("onnxruntime")
    net = make(family, {"type": routing, "experts": 3}).eval()
    randomise_routers(net)
    arch = net.space.sample(7)
    sub = net.extract(arch).eval()
    x = batch(arch, n=2)
    path = tmp_path / "sub.onnx"
    torch.onnx.export(sub, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, sub(x).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("routing", ["layer", "neuron"])
def test_net_cast_after_set_active_routes_in_the_new_dtype(routing):
    net = make("vit", {"type": routing, "experts": 2})
    arch = net.space.largest()
    net.set_active(arch)
    out = net.double()(batch(arch).double())
    assert out.dtype == torch.float64
