"""N:M masks: exact against brute force with heavy ties, in torch's prune form, and (on CUDA) a
real semi-structured sparse kernel."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import pruners


def brute_force_keep(row: list[float], n: int, m: int) -> list[bool]:
    """Per run of m weights: the n-subset with the largest Σ|w|, the lexicographically first
    index set among equals (itertools.combinations yields them in that order)."""
    keep = []
    for start in range(0, len(row), m):
        run = [abs(v) for v in row[start : start + m]]
        best = max(itertools.combinations(range(m), n), key=lambda c: (sum(run[i] for i in c),
                                                                       [-i for i in c]))
        keep += [i in best for i in range(m)]
    return keep


def quantised(shape, seed: int) -> torch.Tensor:
    """Weights in {-1, -0.5, 0, 0.5, 1}: most runs of 4 hold ties, including ±w."""
    return torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).float() / 2


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 4), (1, 2), (2, 8)])
def test_masks_equal_brute_force_with_heavy_ties(n, m):
    for seed in range(3):
        w = quantised((6, 2 * m, 3, 1), seed)  # conv weight: rows of 2m·3 weights
        mask = pruners.n_m_mask(w, n, m)
        rows = w.reshape(6, -1).tolist()
        expected = torch.tensor([brute_force_keep(r, n, m) for r in rows]).reshape(w.shape)
        assert torch.equal(mask, expected), (n, m, seed)
        assert (mask.reshape(6, -1, m).sum(-1) == n).all()


def test_prune_n_m_in_torch_prune_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                          nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():
        for mod in model:
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.copy_(quantised(mod.weight.shape, 1))
    masks = pruners.prune(model, "n_m", 0.5, n=2, m=4)
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(module.weight_mask.bool(), mask)  # torch's prune form
        assert torch.equal(mask, pruners.n_m_mask(module.weight_orig, 2, 4))
        groups = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all()
    assert sum(int((~m).sum()) for m in masks.values()) == sum(m.numel() for m in masks.values()) // 2
    pruners.make_permanent(model)
    assert not hasattr(model[0], "weight_orig")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 4, "m": 4}, "n=4 must be below m=4"),
    ({"n": 2, "m": 5}, "0.weight has rows of 36 weights, not a multiple of m=5"),
])
def test_bad_n_m_requests(kwargs, message):
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(pruners.PruneError, match=message):
        pruners.prune(model, "n_m", 0.5, **kwargs)


def test_n_m_sparsity_must_be_one_minus_n_over_m():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    with pytest.raises(pruners.PruneError, match="prunes exactly 0.5 of the weights; sparsity 0.896 disagrees"):
        pruners.prune(model, "n_m", 0.9)
    masks = pruners.prune(model, "n_m", 0.75, n=1, m=4)
    assert all(int(m.sum()) == m.numel() // 4 for m in masks.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semi_structured_kernel_matches_masked_dense_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128)).half().cuda().eval()
    pruners.prune(model, "n_m", 0.5, n=2, m=4)
    pruners.make_permanent(model)
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    with torch.no_grad():
        dense = model(x)
        assert pruners.to_semi_structured(model) == ["0", "2"]
        assert type(model[0].weight).__name__.startswith("SparseSemiStructuredTensor")
        torch.testing.assert_close(model(x), dense, rtol=1e-2, atol=1e-2)
