"""timm bridge: the largest arch of a bridged supernet is the timm model, weights and all."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import supernets
from nasbench_core.errors import UserError
from supernets.timm_bridge import from_timm

timm = pytest.importorskip("timm")

MODELS = [  # name, timm kwargs, input resolution used for the check
    ("vit_tiny_patch16_224", {"img_size": 32}, 32),
    ("resnet18", {}, 48),
    ("mobilenetv3_small_100", {}, 64),
    pytest.param("mobilenetv3_large_100", {}, 64, marks=pytest.mark.slow),
    pytest.param("resnet50", {}, 64, marks=pytest.mark.slow),
]


def random_timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a mis-mapped tensor shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize(("name", "kwargs", "res"), MODELS)
def test_largest_arch_equals_the_timm_model(name, kwargs, res):
    model = random_timm(name, **kwargs)
    net = from_timm(model).eval()
    assert net.active_arch == net.space.largest()
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(net.extract(net.space.largest()).eval()(x), expected,
                                   atol=1e-5, rtol=0)
        net.set_active(net.space.smallest())
        assert net(x).shape == (2, 7)
    cfg = json.loads(json.dumps(net.build_config()))
    assert supernets.create(**cfg).space.fingerprint() == net.space.fingerprint()


def test_from_timm_by_name_and_overrides():
    net = from_timm("resnet18", num_classes=3, in_chans=1, resolutions=[32, 48])
    assert net.space["resolution"].choices == (32, 48)
    assert net.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_unknown_and_unsupported_models():
    with pytest.raises(UserError, match="unknown timm model 'resnet_does_not_exist'"):
        from_timm("resnet_does_not_exist")
    with pytest.raises(UserError, match="timm model class ConvNeXt is not supported"):
        from_timm(timm.create_model("convnext_atto"))
    with pytest.raises(UserError, match="uses squeeze-excite"):
        from_timm(timm.create_model("seresnet18"))


@pytest.mark.parametrize("name", ["tf_mobilenetv3_small_100", "tf_mobilenetv3_large_100"])
def test_tensorflow_ports_are_refused_rather_than_computed_wrongly(name):
    with pytest.raises(UserError, match=r"pads like TensorFlow \('same' padding in conv_stem\)"):
        from_timm(name)


def test_a_bn_eps_the_families_lack_is_refused():
    model = timm.create_model("mobilenetv3_small_100")
    model.bn1.eps = 1e-3
    with pytest.raises(UserError, match="BatchNorm eps 0.001; the supernet families use 1e-05"):
        from_timm(model)


def test_pretrained_loading_failure_is_a_clear_user_error(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to the hub")
        raise AssertionError("not reached")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match=r"pretrained weights for timm model 'resnet18' \(OSError"):
        from_timm("resnet18", pretrained=True)
