"""Elastic ops equal stock layers built from their active slices; re-ordering preserves function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import supernets
from supernets.ops import (
    DynamicAttention,
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicLayerNorm,
    DynamicLinear,
    DynamicSqueezeExcite,
    make_divisible,
)


def test_conv_slices_leading_channels_and_crops_kernels():
    conv = DynamicConv2d(8, 12, [3, 5], stride=2)
    conv.set_active(6, 4, kernel=3)
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(x, conv.weight[:6, :4, 1:4, 1:4], None, 2, 1)
    torch.testing.assert_close(conv(x), expected)
    assert conv.active_weight().data_ptr() == conv.weight[:6, :4, 1:4, 1:4].data_ptr()  # a view
    stock = conv.to_stock()
    assert (stock.in_channels, stock.out_channels, stock.kernel_size) == (4, 6, (3, 3))
    torch.testing.assert_close(stock(x), expected)


def test_depthwise_kernel_transform_starts_as_centre_crop_then_learns():
    conv = DynamicConv2d(6, 6, [3, 5, 7], depthwise=True)
    assert sorted(conv.kernel_transforms) == ["5to3", "7to5"]
    conv.set_active(4, kernel=3)
    torch.testing.assert_close(conv.active_weight(), conv.weight[:4, :, 2:5, 2:5])
    with torch.no_grad():
        conv.kernel_transforms["5to3"].mul_(2.0)
    torch.testing.assert_close(conv.active_weight(), 2 * conv.weight[:4, :, 2:5, 2:5])
    x = torch.randn(1, 4, 8, 8)
    conv(x).sum().backward()
    assert conv.kernel_transforms["5to3"].grad is not None
    assert conv.kernel_transforms["7to5"].grad is not None
    torch.testing.assert_close(conv.to_stock()(x), conv(x))


@pytest.mark.parametrize(("channels", "stride", "bias"), [(960, 1, False), (700, 2, True)])
def test_chunked_depthwise_training_is_bit_identical_to_one_conv(channels, stride, bias):
    """Training past oneDNN's depthwise weight-gradient cliff runs the conv in channel chunks
    (700 splits unevenly); outputs, all gradients and their channels-last layout are exactly
    those of the single F.conv2d it replaces."""
    from supernets.ops.conv import _chunks_for

    conv = DynamicConv2d(channels, channels, [3, 5, 7], stride, depthwise=True, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
        for t in conv.kernel_transforms.values():
            t.add_(torch.randn_like(t) * 0.1)
    conv.set_active(channels - 4, kernel=7)
    x = torch.randn(3, channels - 4, 5, 5).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert _chunks_for(x, conv.active_weight()) == 2  # the chunked path runs
    out = conv(x)
    grad_out = torch.randn_like(out)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    got = torch.autograd.grad(out, params, grad_out)
    expected_out = F.conv2d(x, conv.active_weight(), conv.active_bias(), stride, 3, 1,
                            channels - 4)
    expected = torch.autograd.grad(expected_out, params, grad_out)
    assert torch.equal(out, expected_out)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
        assert g.stride() == e.stride()
    conv.set_active(channels - 4, kernel=5)  # 25 * C floats: under the cliff
    assert _chunks_for(x, conv.active_weight()) == 1
    with torch.no_grad():  # inference never chunks
        conv.set_active(channels - 4, kernel=7)
        assert _chunks_for(x, conv.active_weight()) == 1


def test_transformed_kernel_cache_follows_in_place_updates():
    conv = DynamicConv2d(4, 4, [3, 5], depthwise=True)
    conv.set_active(4, kernel=3)
    with torch.no_grad():
        first = conv.active_weight()
        assert conv.active_weight() is first  # cached at inference
        conv.weight.add_(1.0)
        torch.testing.assert_close(conv.active_weight(), first + 1.0)
    assert conv.active_weight().requires_grad  # never cached when training


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_inference_caches_see_every_recipe_optimizer_step(optimizer):
    """Fused AdamW writes parameters without bumping their `_version`; caches still refresh."""
    from supernets.mos import MoSDynamicLinear
    from supernets.training import TrainHParams
    from supernets.training.optim import build_optimizer

    conv = DynamicConv2d(4, 4, [3, 5], depthwise=True)
    conv.set_active(4, kernel=3)
    mos = MoSDynamicLinear(4, 4, routing="neuron", experts=2, d_arch=3, router_hidden=8)
    mos.on_set_active({}, torch.rand(3))
    layers = nn.ModuleList([conv, mos])
    opt = build_optimizer(layers, TrainHParams(optimizer=optimizer, lr=0.1))
    with torch.no_grad():
        before = [conv.active_weight(), mos.active_weight()]
    (conv(torch.randn(1, 4, 5, 5)).square().sum() + mos(torch.randn(2, 4)).square().sum()).backward()
    opt.step()
    with torch.no_grad():
        after = [conv.active_weight(), mos.active_weight()]
        fresh = [conv._transformed(conv.weight, 3), mos._mix()[0]]
    for old, new, want in zip(before, after, fresh, strict=True):
        assert not torch.equal(old, new)
        torch.testing.assert_close(new, want, rtol=0, atol=0)


def test_batchnorm_train_mode_updates_only_the_active_slice():
    bn = DynamicBatchNorm2d(6, momentum=None)
    bn.active_features = 4
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    y = bn(x)
    mean = x.mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean[:4], mean)
    torch.testing.assert_close(bn.running_var[:4], x.var((0, 2, 3), unbiased=True))
    assert torch.equal(bn.running_mean[4:], torch.zeros(2))
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    bn.eval()
    torch.testing.assert_close(bn.to_stock().eval()(x), bn(x))


def test_linear_and_layernorm_slices():
    lin = DynamicLinear(10, 8)
    lin.set_active(5, 7)
    x = torch.randn(3, 7)
    torch.testing.assert_close(lin(x), x @ lin.weight[:5, :7].T + lin.bias[:5])
    torch.testing.assert_close(lin.to_stock()(x), lin(x))
    ln = DynamicLayerNorm(10)
    ln.active_dim = 7
    torch.testing.assert_close(ln(x), ln.to_stock()(x))


def test_attention_matches_torch_multihead_attention():
    attn = DynamicAttention(embed_dim=16, heads=4, head_dim=4)
    attn.set_active(embed_dim=12, heads=3)
    x = torch.randn(2, 5, 12)
    ref = nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([m.active_weight() for m in (attn.q, attn.k, attn.v)]))
        ref.in_proj_bias.copy_(torch.cat([m.active_bias() for m in (attn.q, attn.k, attn.v)]))
        ref.out_proj.weight.copy_(attn.proj.active_weight())
        ref.out_proj.bias.copy_(attn.proj.active_bias())
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.to_stock()(x), attn(x))


def test_squeeze_excite_reduced_width_follows_active_channels():
    se = DynamicSqueezeExcite(48)
    se.set_active(24)
    assert (se.reduce.active_out, se.expand.active_in) == (make_divisible(6), 8)
    x = torch.randn(2, 24, 4, 4)
    torch.testing.assert_close(se.to_stock()(x), se(x))
    assert se.count(24) == sum(p.numel() for p in se.to_stock().parameters())


@pytest.mark.parametrize("family", ["mbv3", "resnet", "vit"])
def test_reorder_channels_preserves_the_largest_arch_and_sorts_importance(family):
    torch.manual_seed(0)
    net = supernets.create(family, preset="tiny").eval()
    with torch.no_grad():  # break the symmetry of fresh BN so the order is not trivial
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    arch = net.space.largest()
    x = torch.randn(2, 3, arch["resolution"], arch["resolution"])
    with torch.no_grad():
        before = net(x)
        net.reorder_channels()
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    consumer = {"mbv3": "blocks.0.project", "resnet": "blocks.0.conv2",
                "vit": "blocks.0.mlp.fc2"}[family]
    w = net.get_submodule(consumer).weight.detach().abs()
    l1 = w.sum(dim=[d for d in range(w.dim()) if d != 1])
    assert torch.all(l1[:-1] >= l1[1:])
