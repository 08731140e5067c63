"""The CUDA kernels against the CPU: same thresholds, masks, LAMP scores and MoS mixtures.
Runs only where CUDA exists (`make test-gpu`); it has never run on this project's CI machine."""

from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import _loader

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def cuda_kernels(monkeypatch):
    """Compiled kernels required (a silent fallback to PyTorch would make the test vacuous)."""
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "1")
    assert _loader.extension("cuda") is not None, "the cuda_ext CUDA extension did not build"


def tensors(seed: int, quantised: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=gen) for shape in [(64, 32, 3, 3), (1000,), (7, 5)]]
    return [t.round() if quantised else t for t in out]  # rounding: heavy ties


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9, 1.0])
def test_threshold_masks_and_lamp_equal_the_cpu(quantised, fraction):
    cpu = tensors(0, quantised)
    gpu = [t.cuda() for t in cpu]
    k = round(fraction * sum(t.numel() for t in cpu))
    assert cuda_ext.kth_smallest_abs(gpu, k) == cuda_ext.kth_smallest_abs(cpu, k)
    for got, want in zip(cuda_ext.global_magnitude_masks(gpu, k),
                         cuda_ext.global_magnitude_masks(cpu, k), strict=True):
        assert got.is_cuda and torch.equal(got.cpu(), want)
    assert torch.equal(cuda_ext.lamp_scores(gpu[0]).cpu(), cuda_ext.lamp_scores(cpu[0]))


@pytest.mark.parametrize("neuron", [False, True])
def test_mos_mix_and_its_gradients_equal_the_cpu(neuron):
    gen = torch.Generator().manual_seed(1)
    m, o, i, d, h = 3, 8, 6, 5, 4
    rows = m * (o if neuron else 1)
    args = [torch.randn(d, generator=gen), torch.randn(h, d, generator=gen),
            torch.randn(h, generator=gen), torch.randn(rows, h, generator=gen),
            torch.randn(rows, generator=gen), torch.randn(m, o, i, generator=gen),
            torch.randn(m, o, generator=gen)]
    cpu = [a.clone().requires_grad_(n > 0) for n, a in enumerate(args)]
    gpu = [a.cuda().requires_grad_(n > 0) for n, a in enumerate(args)]
    w_cpu, b_cpu = cuda_ext.mos_mix(*cpu, 6, 4, neuron)
    w_gpu, b_gpu = cuda_ext.mos_mix(*gpu, 6, 4, neuron)
    assert torch.allclose(w_gpu.cpu(), w_cpu, atol=1e-5)
    assert torch.allclose(b_gpu.cpu(), b_cpu, atol=1e-5)
    (w_cpu.square().sum() + b_cpu.sum()).backward()
    (w_gpu.square().sum() + b_gpu.sum()).backward()
    for a, b in zip(cpu[1:], gpu[1:], strict=True):
        assert torch.allclose(b.grad.cpu(), a.grad, atol=1e-4)
