"""A supernet keeps working when it is cast or moved, before and after evaluation: inference
caches (transformed kernels, folded MoS mixtures) key on dtype and device, and an extracted
subnet is built in the supernet's dtype and on its device."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import supernets

FAMILY_KWARGS = {"mbv3": {}, "vit": {}, "resnet": {"block": "bottleneck"}}  # bottleneck: MoS 1x1s
CASES = [(family, mos) for family in supernets.list_supernets() for mos in (None, "layer")]
DTYPES = [torch.float64, torch.bfloat16]
TOLERANCE = {torch.float64: 1e-12, torch.bfloat16: 0.1}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def build(family: str, mos: str | None) -> tuple[supernets.Supernet, dict, torch.Tensor]:
    torch.manual_seed(0)
    net = supernets.create(family, preset="tiny", num_classes=5, in_chans=1,
                           mos=None if mos is None else {"type": mos, "experts": 2},
                           **FAMILY_KWARGS.get(family, {})).eval()
    # A small kernel, so mbv3's kernel transform (and its cache) is on the path.
    arch = net.space.smallest() if family == "mbv3" else net.space.sample(np.random.default_rng(0))
    res = int(arch.get("resolution", 32))
    x = torch.randn(2, 1, res, res, generator=torch.Generator().manual_seed(1))
    return net, arch, x


def forward(net, arch, x) -> torch.Tensor:
    net.set_active(arch)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("family", "mos"), CASES)
def test_a_cast_after_evaluation_computes_what_a_net_built_in_that_dtype_does(family, mos, dtype):
    net, arch, x = build(family, mos)
    fresh = copy.deepcopy(net).to(dtype)  # never ran in float32: no cache to go stale
    forward(net, arch, x)                 # fills the float32 caches
    net.to(dtype)
    with torch.no_grad():                 # the same arch still active: caches must notice
        got = net(x.to(dtype))
    assert got.dtype == dtype
    assert torch.equal(got, forward(fresh, arch, x.to(dtype)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("family", "mos"), CASES)
def test_extraction_keeps_the_supernets_dtype_and_outputs(family, mos, dtype):
    net, arch, x = build(family, mos)
    net.to(dtype)
    sub = net.extract(arch).eval()
    tensors = [*sub.parameters(), *(b for b in sub.buffers() if b.is_floating_point())]
    assert {t.dtype for t in tensors} == {dtype}
    with torch.no_grad():
        got = sub(x.to(dtype))
    want = forward(net, arch, x.to(dtype))
    assert (got.double() - want.double()).abs().max() <= TOLERANCE[dtype] * want.double().abs().max()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("family", "mos"), CASES)
def test_a_cuda_supernet_extracts_onto_cuda_and_moves_back(family, mos):
    net, arch, x = build(family, mos)
    cpu_out = forward(net, arch, x)
    net.cuda()
    with torch.no_grad():
        assert torch.allclose(net(x.cuda()).cpu(), cpu_out, atol=1e-4)
    sub = net.extract(arch)
    assert {p.device.type for p in sub.parameters()} == {"cuda"}
    net.cpu()
    assert torch.allclose(forward(net, arch, x), cpu_out, atol=1e-6)
