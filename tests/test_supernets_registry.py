"""Registry, build configs and the clear errors users get for bad families, archs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import supernets
from nasbench_core.errors import ArchError, CheckpointError, UserError


def test_families_are_registered():
    assert supernets.list_supernets() == ["mbv3", "resnet", "vit"]


def test_unknown_family_names_the_known_ones():
    with pytest.raises(UserError, match="unknown supernet family 'mbv4'; known: mbv3, resnet, vit$"):
        supernets.create("mbv4")


def test_unknown_preset_and_option():
    with pytest.raises(UserError, match=r"unknown resnet preset 'huge'; known: \['default', "):
        supernets.create("resnet", preset="huge")
    with pytest.raises(UserError, match="unknown vit option 'embed'"):
        supernets.create("vit", preset="tiny", embed=3)


@pytest.mark.parametrize("family", ["mbv3", "resnet", "vit"])
def test_build_config_is_json_and_rebuilds_the_same_space(family):
    net = supernets.create(family, preset="tiny", num_classes=4, in_chans=1)
    cfg = json.loads(json.dumps(net.build_config()))
    assert cfg["name"] == family and cfg["mos"] is None
    again = supernets.create(**cfg)
    assert again.space.fingerprint() == net.space.fingerprint()
    assert again.state_dict().keys() == net.state_dict().keys()


def test_invalid_arch_names_key_and_allowed_values():
    net = supernets.create("mbv3", preset="tiny")
    arch = net.space.largest()
    with pytest.raises(ArchError, match=r"'block1.kernel' has value 9; allowed: \[3, 5, 7\]"):
        net.set_active({**arch, "block1.kernel": 9})
    with pytest.raises(ArchError, match=r"missing key 'resolution'; allowed: \[16, 20, 24"):
        net.extract({k: v for k, v in arch.items() if k != "resolution"})
    assert net.active_arch == arch  # a failed set_active leaves the active arch alone


def test_set_active_calls_hooks_with_features():
    net = supernets.create("resnet", preset="tiny")
    seen = []

    class Hook(torch.nn.Module):
        def on_set_active(self, arch, features):
            seen.append((arch, features))

    net.hook = Hook()
    arch = net.space.sample(2)
    net.set_active(arch)
    assert seen[-1][0] == arch
    torch.testing.assert_close(seen[-1][1], torch.from_numpy(net.space.features(arch)))


def test_prepare_input_resizes_to_the_arch_resolution():
    x = torch.randn(2, 3, 32, 32)
    assert supernets.prepare_input(x, {"resolution": 20}).shape == (2, 3, 20, 20)
    assert supernets.prepare_input(x, {"resolution": 32}) is x
    assert supernets.prepare_input(x, {"depth": 3}) is x


def test_checkpoint_from_another_space_is_refused(tmp_path):
    from supernets.checkpoint import load_checkpoint, save_checkpoint

    small = supernets.create("mbv3", preset="tiny", resolutions=[16, 24])
    stem = save_checkpoint(tmp_path / "ckpt", small, meta={"epoch": 1})
    other = supernets.create("mbv3", preset="tiny")
    with pytest.raises(CheckpointError, match="was trained on another search space"):
        load_checkpoint(stem, other)
    again = supernets.create("mbv3", preset="tiny", resolutions=[16, 24])
    load_checkpoint(stem, again)
    for a, b in zip(again.state_dict().values(), small.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_hooks_are_found_after_a_nested_module_is_replaced():
    net = supernets.create("mbv3", preset="tiny")
    calls = []

    class HookConv(type(net.blocks[0].expand)):
        def on_set_active(self, arch, features):
            calls.append(arch)

    old = net.blocks[0].expand
    net.blocks[0].expand = HookConv(old.in_channels, old.out_channels)
    net.set_active(net.space.smallest())
    assert calls == [net.space.smallest()]


@pytest.mark.parametrize("family", ["mbv3", "resnet"])
def test_training_layout_does_not_change_results(family):
    net = supernets.create(family, preset="tiny").eval()
    arch = net.space.sample(4)
    net.set_active(arch)
    x = torch.randn(2, 3, arch["resolution"], arch["resolution"])
    with_grad = net(x)  # channels-last path (CPU training layout)
    with torch.no_grad():
        torch.testing.assert_close(with_grad.detach(), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mbv3", "resnet"])
def test_training_on_cuda_runs_channels_last(family):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from supernets.base import training_layout

    x = torch.randn(2, 3, 32, 32, device="cuda")
    assert training_layout(x).is_contiguous(memory_format=torch.channels_last)
    net = supernets.create(family, preset="tiny").cuda().eval()
    arch = net.space.sample(4)
    net.set_active(arch)
    x = torch.randn(2, 3, arch["resolution"], arch["resolution"], device="cuda")
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(net(x).detach(), expected, atol=1e-4, rtol=1e-4)
