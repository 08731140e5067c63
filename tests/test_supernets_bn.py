"""BN recalibration gives exact cumulative statistics and leaves modes and grads alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import supernets


def batches(n: int, chans: int, res: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, chans, res, res, generator=g) * 2 + 0.5, torch.zeros(4)) for _ in
            range(n)]


def first_bn_stats(inputs: list[torch.Tensor], conv: nn.Module) -> tuple[torch.Tensor, ...]:
    """Direct computation: the average of per-batch means and unbiased variances."""
    with torch.no_grad():
        outs = [conv(x) for x in inputs]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    vars_ = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    return means, vars_


@pytest.mark.parametrize("family", ["mbv3", "resnet"])
def test_recalibrate_supernet_matches_direct_statistics(family):
    torch.manual_seed(0)
    net = supernets.create(family, preset="tiny").eval()
    arch = net.space.sample(1)
    net.set_active(arch)
    data = batches(5, 3, 32)
    momentum = net.stem[1].momentum
    supernets.recalibrate_bn(net, data, num_batches=3)
    assert not net.training
    assert net.stem[1].momentum == momentum
    assert all(p.grad is None for p in net.parameters())
    inputs = [supernets.prepare_input(x, arch) for x, _ in data[:3]]
    mean, var = first_bn_stats(inputs, net.stem[0])
    torch.testing.assert_close(net.stem[1].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.stem[1].running_var, var, atol=1e-5, rtol=1e-5)
    assert int(net.stem[1].num_batches_tracked) == 3


def test_recalibrate_dynamic_bn_of_a_block_and_extracted_module():
    torch.manual_seed(0)
    net = supernets.create("mbv3", preset="tiny")
    arch = net.space.smallest()
    net.set_active(arch)
    data = batches(2, 3, 32)
    supernets.recalibrate_bn(net, data, num_batches=2)
    assert net.training
    block = net.blocks[0]
    # during recalibration the layers before it normalise with batch statistics
    stem = nn.Sequential(copy.deepcopy(net.stem), copy.deepcopy(net.first)).train()
    with torch.no_grad():
        inputs = [stem(supernets.prepare_input(x, arch)) for x, _ in data]
    mean, var = first_bn_stats(inputs, block.expand)
    mid = block.expand_bn.active_features
    torch.testing.assert_close(block.expand_bn.running_mean[:mid], mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(block.expand_bn.running_var[:mid], var, atol=1e-5, rtol=1e-4)

    sub = net.extract(arch).eval()
    for m in sub.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    supernets.recalibrate_bn(sub, data, num_batches=2, arch=arch)
    assert not sub.training
    net.eval()
    x = supernets.prepare_input(data[0][0], arch)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), net(x), atol=1e-5, rtol=1e-5)
