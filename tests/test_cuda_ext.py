"""Parity of every cuda_ext op with a plain-PyTorch reference, on each available CPU backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cuda_ext
from cuda_ext import _loader, _torch_ops
from nasbench_core.errors import UserError


def _cpp_is_cached() -> bool:
    return any(_loader.build_dir("cpu").glob("nasbench_ext_cpu*.so"))


# The first build of the C++ extension takes about a minute; once it is in the cache, loading
# it is fast, so the compiled path joins the default run.
BACKENDS = [
    "torch",
    pytest.param("cpp", marks=() if _cpp_is_cached() else pytest.mark.slow),
]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test with NASBENCH_CUDA_EXT forcing one backend; yields its name."""
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "0" if request.param == "torch" else "1")
    assert cuda_ext.backend() == request.param
    return request.param


def _flat_abs(tensors):
    parts = [t.detach().float().abs().reshape(-1) for t in tensors]
    return torch.cat(parts) if parts else torch.empty(0)


def _ref_masks(tensors, k):
    """Prune the first k of a stable ascending sort of |w| over the concatenation."""
    flat = _flat_abs(tensors)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return [m.view(t.shape) for m, t in zip(keep.split([t.numel() for t in tensors]), tensors, strict=True)]


def _ref_lamp(w):
    """Formula of the LAMP paper, written as in its reference code, in float64."""
    sq = w.double().reshape(-1).square()
    s, idx = torch.sort(sq, stable=True)
    excl = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)[:-1]])
    denom = sq.sum() - excl
    out = torch.zeros_like(sq)
    out[idx] = torch.where(denom > 0, s / denom, torch.zeros_like(s))
    return out.float().view(w.shape)


def _cases():
    g = torch.Generator().manual_seed(0)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ints = lambda *s: torch.randint(-3, 4, s, generator=g).float()  # noqa: E731
    return {
        "random": [randn(64, 33), randn(1000), randn(3, 3, 5, 5)],
        "ties": [ints(50, 20), ints(300), ints(7, 7)],
        "zeros_signed": [torch.tensor([0.0, -0.0, 1.0, -1.0, -0.0, 2.0]), torch.zeros(10)],
        "empty": [torch.empty(0), randn(20, 5), torch.empty(3, 0), ints(40)],
        "mixed_dtypes": [randn(40, 10), randn(300).half(), randn(17, 3).bfloat16(), ints(30).half()],
        "extremes": [
            torch.tensor([float("inf"), -float("inf"), 1e-45, -1e-40, 3.4e38, 0.0]),
            randn(10),
        ],
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_kth_smallest_abs_matches_kthvalue(backend, case):
    ts = CASES[case]
    flat = _flat_abs(ts)
    n = flat.numel()
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n} - {0}):
        expected = torch.kthvalue(flat, k).values.item()
        assert cuda_ext.kth_smallest_abs(ts, k) == expected, (case, k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_global_magnitude_masks_prune_exactly_k_with_ordered_ties(backend, case):
    ts = CASES[case]
    n = sum(t.numel() for t in ts)
    for k in sorted({0, 1, n // 4, n // 2, n - 1, n}):
        masks = cuda_ext.global_magnitude_masks(ts, k)
        assert [m.dtype for m in masks] == [torch.bool] * len(ts)
        assert sum(int((~m).sum()) for m in masks) == k
        for m, r in zip(masks, _ref_masks(ts, k), strict=True):
            assert torch.equal(m, r), (case, k)


def test_masks_from_threshold_rejects_inconsistent_k(backend):
    ts = [torch.tensor([1.0, 2.0, 2.0, 3.0])]
    assert [m.tolist() for m in cuda_ext.masks_from_threshold(ts, 2.0, 2)] == [
        [False, False, True, True]
    ]
    with pytest.raises(UserError, match="cannot prune exactly k=4"):
        cuda_ext.masks_from_threshold(ts, 2.0, 4)
    with pytest.raises(UserError, match="cannot prune exactly k=0"):
        cuda_ext.masks_from_threshold(ts, 2.0, 0)
    with pytest.raises(UserError, match="must be a non-negative number"):
        cuda_ext.masks_from_threshold(ts, float("nan"), 0)


def test_nan_names_the_tensor(backend):
    ts = [torch.empty(0), torch.tensor([1.0, -float("nan")]).half(), torch.ones(3)]
    with pytest.raises(UserError, match="tensor 1 contains NaN"):
        cuda_ext.kth_smallest_abs(ts, 2)
    with pytest.raises(UserError, match="tensor 1 contains NaN"):
        cuda_ext.global_magnitude_masks(ts, 0)
    with pytest.raises(UserError, match="tensor 0 contains NaN"):
        cuda_ext.lamp_scores(torch.tensor([float("nan")]).half())


@pytest.mark.parametrize("k", [0, 8, -1, 2.0, True])
def test_k_out_of_range(backend, k):
    with pytest.raises(UserError, match="out of range"):
        cuda_ext.kth_smallest_abs([torch.ones(3), torch.ones(4)], k)


def test_bad_arguments_are_user_errors(backend):
    with pytest.raises(UserError, match="float64"):
        cuda_ext.kth_smallest_abs([torch.ones(3, dtype=torch.float64)], 1)
    with pytest.raises(UserError, match="single tensor"):
        cuda_ext.kth_smallest_abs(torch.ones(3), 1)
    with pytest.raises(UserError, match=r"masks\[0\] has shape \(2,\)"):
        cuda_ext.apply_masks_([torch.ones(3)], [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(UserError, match="got 0 masks for 1 tensors"):
        cuda_ext.apply_masks_([torch.ones(3)], [])


def test_apply_masks_and_rewind(backend):
    g = torch.Generator().manual_seed(1)
    shapes = [(30, 20), (0,), (513,), (4, 4, 3, 3)]
    dtypes = [torch.float32, torch.float32, torch.float16, torch.bfloat16]
    ws = [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    w0s = [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    ms = [torch.rand(s, generator=g) > 0.5 for s in shapes]
    expected = [w * m for w, m in zip(ws, ms, strict=True)]
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    cuda_ext.apply_masks_(params, ms)
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.data, e)
    cuda_ext.rewind_(params, w0s, ms)
    for p, w0, m in zip(params, w0s, ms, strict=True):
        assert torch.equal(p.data, w0 * m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lamp_scores_match_paper_formula(backend, dtype):
    g = torch.Generator().manual_seed(2)
    for w in [
        torch.randn(40, 30, generator=g),
        torch.randint(-2, 3, (9, 9), generator=g).float(),
        torch.zeros(5),
        torch.empty(0, 3),
    ]:
        w = w.to(dtype)
        got = cuda_ext.lamp_scores(w)
        assert got.shape == w.shape and got.dtype == torch.float32
        assert torch.allclose(got, _ref_lamp(w), rtol=1e-6, atol=0)


def test_torch_path_is_exact_across_chunk_boundaries(monkeypatch):
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "0")
    monkeypatch.setattr(_torch_ops, "CHUNK", 61)
    ts = [CASES["ties"][1], CASES["mixed_dtypes"][1], CASES["mixed_dtypes"][2], CASES["ties"][2]]
    n = sum(t.numel() for t in ts)
    flat = _flat_abs(ts)
    for k in [1, n // 3, n]:
        assert cuda_ext.kth_smallest_abs(ts, k) == torch.kthvalue(flat, k).values.item()
        for m, r in zip(cuda_ext.global_magnitude_masks(ts, k), _ref_masks(ts, k), strict=True):
            assert torch.equal(m, r)


@pytest.mark.parametrize("backend", BACKENDS[1:], indirect=True)
def test_compiled_radix_select_recovers_when_the_first_window_misses(backend):
    """The sampled first window only saves passes; a wrong one must not change the answer."""
    mod = _loader.extension("cpu").module
    ts = CASES["ties"] + CASES["random"] + CASES["extremes"]
    flat = _flat_abs(ts)
    n = flat.numel()
    for k in [1, n // 2, n - 3, n]:
        expected = torch.kthvalue(flat, k).values.view(torch.int32).item()
        for lo, width in [(0x7F000000, 1), (0, 1), (0x3F800000, 1 << 20), (0, 1 << 32)]:
            assert mod.kth_key(ts, k, lo, width) == expected, (k, hex(lo), width)


@pytest.mark.parametrize("threads", [1, 2])
def test_kth_smallest_abs_exact_on_large_mixed_inputs(backend, threads):
    """Big enough for the sampled window, the block scan and several threads' chunks."""
    g = torch.Generator().manual_seed(3)
    ts = [torch.randn(300, 700, generator=g) * 0.05, torch.randint(-20, 21, (90_000,), generator=g).float(),
          torch.randn(50_000, generator=g).half(), torch.randn(4, 64, 3, 3, generator=g) * 3]
    flat = _flat_abs(ts)
    n = flat.numel()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in [1, n // 10, n // 2, round(0.9 * n), n - 1, n]:
            assert cuda_ext.kth_smallest_abs(ts, k) == torch.kthvalue(flat, k).values.item(), k
    finally:
        torch.set_num_threads(previous)


# -- mixture-of-supernets routing and mixing ---------------------------------------------------
def _mos_reference(features, w1, b1, w2, b2, experts, biases, out, inp, neuron):
    """The MoS formulas written out (Jawahar et al.): router MLP, softmax, weighted experts."""
    m = experts.shape[0]
    logits = F.linear(F.relu(F.linear(features, w1, b1)), w2, b2)
    if neuron:  # W[r] = sum_i alpha[r, i] E_i[r, :in]
        alpha = logits[: out * m].view(out, m).softmax(-1)
        weight = sum(alpha[:, i].view(-1, *[1] * (experts.dim() - 2)) * experts[i, :out, :inp]
                     for i in range(m))
        bias = None if biases is None else sum(alpha[:, i] * biases[i, :out] for i in range(m))
    else:  # W = sum_i alpha_i E_i[:out, :in]
        alpha = logits.softmax(-1)
        weight = sum(alpha[i] * experts[i, :out, :inp] for i in range(m))
        bias = None if biases is None else sum(alpha[i] * biases[i, :out] for i in range(m))
    return weight, bias


def _mos_inputs(kind: str, neuron: bool, bias: bool, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m, out_max, in_max, d, hidden = 3, 8, 6, 5, 16
    n_logits = m * out_max if neuron else m
    shape = (m, out_max, in_max) + ((1, 1) if kind == "conv" else ())
    tensors = [torch.rand(d, generator=g), torch.randn(hidden, d, generator=g),
               torch.randn(hidden, generator=g), torch.randn(n_logits, hidden, generator=g),
               torch.randn(n_logits, generator=g), torch.randn(shape, generator=g),
               torch.randn(m, out_max, generator=g) if bias else None]
    return [None if t is None else t.to(dtype).requires_grad_(i > 0) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("active", [(8, 6), (5, 4), (1, 1)], ids=["full", "sliced", "one"])
@pytest.mark.parametrize("neuron", [False, True], ids=["layer", "neuron"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_mos_mix_and_its_gradients_match_the_formulas(backend, kind, neuron, active, dtype):
    """Values and the gradients of every router, expert and bias tensor, on each backend (the
    compiled loops for float/double, its ATen path for bfloat16)."""
    out, inp = active
    for bias in (True, False):
        inputs = _mos_inputs(kind, neuron, bias, dtype)
        got = cuda_ext.mos_mix(*inputs, out, inp, neuron)
        want = _mos_reference(*inputs, out, inp, neuron)
        tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
        params = [t for t in inputs[1:] if t is not None]
        probes = [torch.randn(w.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
                  for w in want if w is not None]
        grads = []
        for outputs in (got, want):
            outputs = [o for o in outputs if o is not None]
            loss = sum((o * p).sum() for o, p in zip(outputs, probes, strict=True))
            grads.append(torch.autograd.grad(loss, params))
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(g, w, **tol)
        for g, w in zip(*grads, strict=True):
            torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_mos_mix_on_a_layer_big_enough_to_split_across_threads(backend, threads):
    g = torch.Generator().manual_seed(4)
    m, out_max, in_max, d, hidden = 3, 512, 256, 7, 32
    inputs = [torch.rand(d, generator=g), torch.randn(hidden, d, generator=g),
              torch.randn(hidden, generator=g), torch.randn(m * out_max, hidden, generator=g) * 0.1,
              torch.randn(m * out_max, generator=g), torch.randn(m, out_max, in_max, generator=g),
              torch.randn(m, out_max, generator=g)]
    inputs = [t.double().requires_grad_(i > 0) for i, t in enumerate(inputs)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cuda_ext.mos_mix(*inputs, 300, 200, True)
        grads = torch.autograd.grad(got[0].square().sum() + got[1].sum(), inputs[1:])
    finally:
        torch.set_num_threads(previous)
    want = _mos_reference(*inputs, 300, 200, True)
    ref = torch.autograd.grad(want[0].square().sum() + want[1].sum(), inputs[1:])
    for a, b in zip([*got, *grads], [*want, *ref], strict=True):
        torch.testing.assert_close(a, b)
