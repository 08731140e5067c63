"""Extraction: stock-layer subnets equal the supernet in that arch, with analytic param counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import supernets
from supernets.stock import Attention, PatchEmbed, Residual, SelectToken, SqueezeExcite

FAMILIES = supernets.list_supernets()
ARCHS = ["smallest", "largest", "random0", "random1", "random2"]
STOCK_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Hardswish,
                nn.Hardsigmoid, nn.GELU, nn.Identity, nn.AdaptiveAvgPool2d, nn.Flatten,
                nn.MaxPool2d)
CONTAINERS = (nn.Sequential, Residual, Attention, SqueezeExcite, PatchEmbed, SelectToken)


def pick(space: supernets.SearchSpace, which: str) -> dict:
    if which == "smallest":
        return space.smallest()
    if which == "largest":
        return space.largest()
    return space.sample(int(which.removeprefix("random")))


def randomized(family: str, seed: int = 0, **kwargs) -> supernets.Supernet:
    """A tiny supernet whose 1-d params and kernel transforms are moved off their init."""
    torch.manual_seed(seed)
    net = supernets.create(family, preset="tiny", **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "kernel_transforms" in name or p.dim() == 1:  # transforms, norms, biases
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def calibrated(net: supernets.Supernet, arch: dict, seed: int = 0) -> torch.Tensor:
    """Activate `arch`, give BN real statistics, return an input batch at its resolution."""
    net.set_active(arch)
    g = torch.Generator().manual_seed(seed)
    res = arch["resolution"]
    x = torch.randn(8, net.build_config()["in_chans"], res, res, generator=g)
    supernets.recalibrate_bn(net, [x], 1)
    net.eval()
    return x


@pytest.mark.parametrize("which", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_extracted_subnet_matches_supernet(family: str, which: str) -> None:
    net = randomized(family)
    arch = pick(net.space, which)
    x = calibrated(net, arch)
    with torch.no_grad():
        expected = net(x)
        sub = net.extract(arch).eval()
        got = sub(x)
    assert expected.std(0).mean() > 1e-3  # outputs depend on the input: the check has teeth
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for m in sub.modules():
        assert isinstance(m, STOCK_LEAVES + CONTAINERS), type(m)
    assert sum(p.numel() for p in sub.parameters()) == net.count_params(arch)


@pytest.mark.parametrize("family", FAMILIES)
def test_count_params_of_the_largest_arch_is_the_supernet_minus_shared_extras(family):
    net = supernets.create(family, preset="tiny")
    full = sum(p.numel() for n, p in net.named_parameters() if "kernel_transforms" not in n)
    assert net.count_params(net.space.largest()) == full
    assert net.count_params(net.space.smallest()) < full


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_keeps_the_active_arch_and_copies_weights(family):
    net = supernets.create(family, preset="tiny")
    active = net.space.sample(5)
    net.set_active(active)
    sub = net.extract(net.space.smallest())
    assert net.active_arch == active
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    fresh = net.extract(net.space.smallest())
    assert all(not torch.equal(a, b) for a, b in zip(sub.parameters(), fresh.parameters(),
                                                     strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_one_channel_input_and_width_mult(family):
    net = supernets.create(family, preset="tiny", in_chans=1, num_classes=3, width_mult=1.5)
    arch = net.space.sample(0)
    net.set_active(arch)
    x = torch.randn(2, 1, arch["resolution"], arch["resolution"])
    assert net(x).shape == (2, 3)
    narrow = supernets.create(family, preset="tiny", in_chans=1, num_classes=3)
    assert net.count_params(net.space.largest()) > narrow.count_params(narrow.space.largest())


def _onnx_matches(family: str, which: str, tmp_path) -> None:
    import onnxruntime as ort

    net = randomized(family)
    arch = pick(net.space, which)
    x = calibrated(net, arch)
    sub = net.extract(arch).eval()
    path = tmp_path / f"{family}.onnx"
    try:
        torch.onnx.export(sub, (x[:2],), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    except (TypeError, RuntimeError):  # legacy exporter gone: use the dynamo one
        torch.onnx.export(sub, (x[:2],), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]  # batch 8 != 2
    with torch.no_grad():
        expected = net(x).numpy()
    assert abs(got - expected).max() < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_matches_onnxruntime(tmp_path):
    _onnx_matches("resnet", "random1", tmp_path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("which", ["smallest", "largest", "random0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_all_families(family, which, tmp_path):
    _onnx_matches(family, which, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_default_preset_extraction_matches(family):
    torch.manual_seed(0)
    net = supernets.create(family)
    arch = net.space.sample(7)
    x = calibrated(net, arch)[:2]
    with torch.no_grad():
        torch.testing.assert_close(net.extract(arch).eval()(x), net(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in net.extract(arch).parameters()) == net.count_params(arch)
