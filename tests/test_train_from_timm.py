"""`supernet: {from_timm: NAME, weights: PATH}`: training starts from an imported timm model
whose largest arch computes what the model computes, with channels sorted by importance first
(so smaller widths keep the important ones), and the head resized to the data's classes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import nasbench
from nasbench.runners.train import SupernetSection, build_supernet
from nasbench_core.errors import UserError
from tests.test_supernets_timm import random_timm

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A resnet18 with random weights and BN statistics, 7 classes, saved as a user would."""
    model = random_timm("resnet18")
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def section(path, **kw) -> SupernetSection:
    return SupernetSection(from_timm="resnet18", weights=path, **kw)


@pytest.mark.parametrize("reorder", [True, False])
def test_the_largest_arch_is_the_loaded_model_with_or_without_sorting(weights, reorder):
    model, path = weights
    net = build_supernet(section(path, reorder_channels=reorder), num_classes=7, in_chans=3).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), atol=1e-5, rtol=0)


def test_sorting_changes_what_the_smaller_widths_hold(weights):
    _, path = weights
    sorted_net = build_supernet(section(path), num_classes=7, in_chans=3).eval()
    plain = build_supernet(section(path, reorder_channels=False), num_classes=7, in_chans=3).eval()
    small = sorted_net.space.smallest()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    sorted_net.set_active(small)
    plain.set_active(small)
    with torch.no_grad():
        assert not torch.allclose(sorted_net(x), plain(x))
    # The kept channels are the heaviest: block 0's conv1 rows by L1 of conv2's columns.
    block = sorted_net.blocks[0]
    importance = block.conv2.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])


def test_other_classes_get_a_new_head_and_keep_the_backbone(weights):
    model, path = weights
    net = build_supernet(section(path, reorder_channels=False), num_classes=3, in_chans=3)
    assert net.fc.out_features == 3
    torch.testing.assert_close(net.stem[0].weight, model.conv1.weight)


def test_mistakes_are_one_line_errors(weights, tmp_path):
    _, path = weights
    with pytest.raises(UserError, match="take 3-channel images; the data has 1: set data.channels=3"):
        build_supernet(section(path), num_classes=7, in_chans=1)
    bad = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(7, 4)}, str(bad))
    with pytest.raises(UserError, match="does not fit timm model 'resnet18'"):
        build_supernet(section(bad), num_classes=7, in_chans=3)
    with pytest.raises(ValueError, match="need supernet.from_timm"):
        SupernetSection(weights=path)


def test_train_runs_from_the_imported_weights(weights, tmp_path):
    _, path = weights
    run = nasbench.train({
        "supernet": {"from_timm": "resnet18", "weights": str(path),
                     "kwargs": {"resolutions": [32]}},
        "data": {"name": "digits", "channels": 3, "resolution": 32, "limit": 64, "batch_size": 32},
        "train": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 1, "bn_recal_batches": 1},
        "device": "cpu", "run": {"root": tmp_path, "name": "t"}}, quiet=True)
    assert run.manifest["supernet"]["name"] == "resnet"
    assert len(run.metrics) == 1
