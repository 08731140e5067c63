"""Zero-cost proxies against straightforward reference computations written out here: a loop over
samples with `.backward()` for GradSign, a BN-free twin network for synflow, mask gradients for
snip, the full Jacobian for jacov and explicit pairwise Hamming distances for nwot."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasbench_core.errors import UserError
from search import zero_cost

N, C, R = 6, 2, 6  # samples, input channels, resolution
CLASSES = 3


def mlp(bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(C * R * R, 10)]
    layers += [nn.BatchNorm1d(10)] if bn else []
    layers += [nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, CLASSES)]
    return nn.Sequential(*layers)


def cnn(bn: bool = True) -> nn.Sequential:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return ([nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)]
                + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)])

    return nn.Sequential(*block(C, 4, 1), *block(4, 6, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, CLASSES))


def make(kind: str, quantised: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"mlp": mlp, "cnn": cnn}[kind]().double()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN so eval mode is not the identity
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
        if quantised:  # heavy ties: weights on a coarse grid, many exactly-zero gradients
            for p in model.parameters():
                p.copy_((p * 4).round() / 4)
    return model


def batch(quantised: bool = False, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, R, R, generator=g, dtype=torch.float64)
    if quantised:
        x = x.round().clamp(-1, 1)
    return x, torch.randint(0, CLASSES, (N,), generator=g)


CASES = [("mlp", False), ("cnn", False), ("cnn", True), ("mlp", True)]


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------- references

def ref_gradsign(model: nn.Module, x, y) -> float:
    """Σ_params |Σ_samples sign(g)|, one sample at a time; entries within rounding of zero
    (the documented SIGN_RTOL rule) have sign 0."""
    net = copy.deepcopy(model).eval()
    signs = [torch.zeros_like(p) for p in net.parameters()]
    for i in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
        for s, p in zip(signs, net.parameters(), strict=True):
            g = p.grad
            noise = zero_cost.SIGN_RTOL * torch.finfo(g.dtype).eps * g.abs().max()
            s += torch.where(g.abs() <= noise, 0.0, torch.sign(g))
    return float(sum(s.abs().sum() for s in signs))


def bn_free_twin(model: nn.Module, kind: str) -> nn.Module:
    """The same architecture built without BN, with the model's conv/linear weights copied."""
    twin = {"mlp": mlp, "cnn": cnn}[kind](bn=False).double()
    src = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    dst = [m for m in twin.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(src, dst, strict=True):
            b.weight.copy_(a.weight)
            if b.bias is not None:
                b.bias.copy_(a.bias if a.bias is not None else torch.zeros_like(b.bias))
    return twin


def ref_synflow(model: nn.Module, kind: str, x) -> float:
    twin = bn_free_twin(model, kind)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(p.abs())
    out = twin(torch.ones(1, *x.shape[1:], dtype=torch.float64)).sum()
    out.backward()
    return float(sum((w * w.grad).abs().sum().detach() for w in weights_of(twin)))


def ref_snip(model: nn.Module, x, y) -> float:
    """Connection sensitivity: |∂L/∂m| of a multiplicative mask m = 1 on every weight."""
    net = copy.deepcopy(model).train()
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = dict(net.named_parameters())
    masks = {n: torch.ones_like(params[f"{n}.weight"], requires_grad=True) for n in names}
    masked = {k: v * masks[k[:-len(".weight")]] if k[:-len(".weight")] in masks else v
              for k, v in params.items()}
    loss = F.cross_entropy(torch.func.functional_call(net, masked, (x,)), y)
    grads = torch.autograd.grad(loss, list(masks.values()))
    return float(sum(g.abs().sum() for g in grads))


def ref_grad_norm(model: nn.Module, x, y) -> float:
    net = copy.deepcopy(model).train()
    F.cross_entropy(net(x), y).backward()
    return float(sum(torch.sqrt((w.grad ** 2).sum()) for w in weights_of(net)))


def ref_jacov(model: nn.Module, x) -> float:
    net = copy.deepcopy(model).train()
    full = torch.autograd.functional.jacobian(lambda inp: net(inp), x)  # [N, K, N, C, R, R]
    jac = full.sum(dim=(0, 1)).reshape(len(x), -1).numpy()
    centred = jac - jac.mean(axis=1, keepdims=True)
    cov = centred @ centred.T
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    v = np.linalg.eigvals(corr).real
    k = 1e-5
    return float(-np.sum(np.log(v + k) + 1 / (v + k)))


def ref_nwot(model: nn.Module, x) -> float:
    net = copy.deepcopy(model).train()
    codes: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: codes.append(o.reshape(len(x), -1) > 0))
             for m in net.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    c = torch.cat(codes, dim=1).tolist()
    n_units = len(c[0])
    K = np.zeros((len(x), len(x)))
    for i, j in itertools.product(range(len(x)), repeat=2):
        hamming = sum(a != b for a, b in zip(c[i], c[j], strict=True))
        K[i, j] = n_units - hamming
    return float(np.linalg.slogdet(K)[1])


# ---------------------------------------------------------------- value tests

@pytest.mark.parametrize("kind,quantised", CASES)
def test_gradsign_matches_per_sample_loop(kind, quantised):
    model, (x, y) = make(kind, quantised), batch(quantised)
    expected = ref_gradsign(model, x, y)
    assert zero_cost.score(model, x, y, proxy="gradsign") == pytest.approx(expected, abs=0.5)


def test_gradsign_loop_fallback_matches_vmap(monkeypatch):
    """A model vmap cannot trace gets the same score from the loop over samples."""
    model, (x, y) = make("cnn"), batch()
    vmapped = zero_cost.score(model, x, y, proxy="gradsign")

    def refuse(*_a, **_k):
        raise RuntimeError("vmap: not supported")

    monkeypatch.setattr(torch.func, "vmap", refuse)
    assert zero_cost.score(model, x, y, proxy="gradsign") == pytest.approx(vmapped, abs=0.5)


def test_gradsign_is_bounded_by_samples_times_params():
    model, (x, y) = make("mlp"), batch()
    value = zero_cost.score(model, x, y, proxy="gradsign")
    assert 0 < value <= N * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind,quantised", CASES)
def test_synflow_matches_bn_free_twin(kind, quantised):
    model, (x, y) = make(kind, quantised), batch(quantised)
    assert zero_cost.score(model, x.float(), y, proxy="synflow") == pytest.approx(
        ref_synflow(model, kind, x), rel=1e-9)


def test_synflow_is_data_free():
    model, (x, y) = make("cnn"), batch()
    a = zero_cost.score(model, x, y, proxy="synflow")
    assert zero_cost.score(model, -3 * x, (y + 1) % CLASSES, proxy="synflow") == a


@pytest.mark.parametrize("kind,quantised", CASES)
def test_snip_matches_mask_gradient(kind, quantised):
    model, (x, y) = make(kind, quantised), batch(quantised)
    assert zero_cost.score(model, x, y, proxy="snip") == pytest.approx(ref_snip(model, x, y),
                                                                        rel=1e-9)


@pytest.mark.parametrize("kind,quantised", CASES)
def test_grad_norm_matches_backward(kind, quantised):
    model, (x, y) = make(kind, quantised), batch(quantised)
    assert zero_cost.score(model, x, y, proxy="grad_norm") == pytest.approx(
        ref_grad_norm(model, x, y), rel=1e-9)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_jacov_matches_full_jacobian(kind):
    model, (x, y) = make(kind), batch()
    assert zero_cost.score(model, x, y, proxy="jacov") == pytest.approx(ref_jacov(model, x),
                                                                         rel=1e-6)


@pytest.mark.parametrize("kind,quantised", CASES)
def test_nwot_matches_hamming_kernel(kind, quantised):
    model, (x, y) = make(kind, quantised), batch(quantised)
    assert zero_cost.score(model, x, y, proxy="nwot") == pytest.approx(ref_nwot(model, x),
                                                                        rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- contract tests

def state(model: nn.Module) -> tuple:
    return (model.training, [m.training for m in model.modules()],
            {k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [type(m) for m in model.modules()], [p.dtype for p in model.parameters()])


def same(a: tuple, b: tuple) -> bool:
    if a[0] != b[0] or a[1] != b[1] or a[3] != b[3] or a[5] != b[5] or a[6] != b[6]:
        return False
    if a[2].keys() != b[2].keys() or not all(torch.equal(a[2][k], b[2][k]) for k in a[2]):
        return False
    return all((g is None and h is None) or (g is not None and h is not None and torch.equal(g, h))
               for g, h in zip(a[4], b[4], strict=True))


@pytest.mark.parametrize("proxy", zero_cost.list_proxies())
def test_model_unchanged_after_scoring(proxy):
    model, (x, y) = make("cnn"), batch()
    model.eval()
    model[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    model[-1].weight.grad = torch.full_like(model[-1].weight, 7.0)
    before = state(model)
    zero_cost.score(model, x, y, proxy=proxy)
    assert same(before, state(model))
    model.train()
    before = state(model)
    zero_cost.score(model, x, y, proxy=proxy)
    assert same(before, state(model))


def test_list_proxies():
    assert zero_cost.list_proxies() == ["grad_norm", "gradsign", "jacov", "nwot", "snip",
                                        "synflow"]


def test_unknown_proxy_is_one_line_user_error():
    model, (x, y) = make("mlp"), batch()
    with pytest.raises(UserError) as err:
        zero_cost.score(model, x, y, proxy="gradsing")
    message = str(err.value)
    assert "\n" not in message and "gradsing" in message
    assert all(name in message for name in zero_cost.list_proxies())


def test_nwot_without_relu_is_user_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * R * R, CLASSES)).double()
    x, y = batch()
    with pytest.raises(UserError, match="nn.ReLU"):
        zero_cost.score(model, x, y, proxy="nwot")


# ---------------------------------------------------------------- objectives

@pytest.fixture(scope="module")
def supernet_ctx():
    import search
    import supernets

    torch.manual_seed(0)
    net = supernets.create("resnet", preset="tiny", num_classes=3, in_chans=1)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(2)]
    return net, batches, search.ObjectiveContext(supernet=net, calib_loader=batches,
                                                 input_shape=(1, 16, 16))


def test_zc_objectives_score_the_extracted_subnet_on_the_first_batch(supernet_ctx, monkeypatch):
    import search

    net, batches, ctx = supernet_ctx
    names = [f"zc_{p}" for p in zero_cost.list_proxies()]
    assert set(names) <= set(search.list_objectives())
    arch = net.space.sample(np.random.default_rng(3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for name in ["zc_gradsign", "zc_synflow"]:
        obj = search.make_objective(name, ctx)
        assert (obj.direction, obj.unit, obj.source) == ("max", "score", "predicted")
        x, y = batches[0]  # the first batch, at the arch's resolution
        x = torch.nn.functional.interpolate(x, size=(arch["resolution"],) * 2, mode="bilinear")
        expected = zero_cost.score(net.extract(arch), x, y, proxy=name[3:])
        assert obj(arch) == pytest.approx(expected, rel=1e-9)
        monkeypatch.setattr(zero_cost, "score", lambda *a, **k: pytest.fail("not cached"))
        assert obj(arch) == pytest.approx(expected, rel=1e-9)
        monkeypatch.undo()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_zc_objective_without_calibration_batch_is_user_error(supernet_ctx):
    import search

    net, _, _ = supernet_ctx
    ctx = search.ObjectiveContext(supernet=net, calib_loader=[])
    with pytest.raises(UserError, match="zc_nwot.*empty"):
        search.make_objective("zc_nwot", ctx)


# ---------------------------------------------------------------- warm start

@pytest.fixture(scope="module")
def tabular():
    from nasbench.tabular.builtin import load_builtin

    return load_builtin()


def run_search(bench, optimizer: str, budget: int, scorer, **settings):
    import search

    ev = search.Evaluator(bench.space, bench.objectives(["top1", "latency_ms"]), budget=budget)
    search.create_optimizer(optimizer, **settings).run(
        search.SearchProblem(ev, zero_cost=scorer), seed=0)
    return ev.df


@pytest.mark.parametrize("optimizer,settings,extremes", [
    ("random", {"batch_size": 4}, False),
    ("linas", {"pop_size": 10, "seed_extremes": False}, False),
    ("linas", {"pop_size": 10}, True),  # LINAS's smallest and largest archs come first
])
def test_warm_start_measures_the_pool_top_first(tabular, optimizer, settings, extremes):
    """The pool is the whole space (216 archs): the first rows are the proxy's global top 7."""
    space = tabular.space
    ids = sorted(tabular.table.index)
    value = dict(zip(ids, np.random.default_rng(5).permutation(len(ids)), strict=True))
    ends = [space.arch_id(space.smallest()), space.arch_id(space.largest())]
    value.update({a: -1 for a in ends})  # never in the top: the orders stay distinguishable
    calls = []

    def scorer(archs, proxy):
        calls.append((len(archs), proxy))
        return [float(value[tabular.space.arch_id(a)]) for a in archs]

    df = run_search(tabular, optimizer, 10, scorer,
                    zc_warm_start={"proxy": "nwot", "pool": 5000, "top": 7}, **settings)
    expected = (ends if extremes else []) + sorted(ids, key=lambda a: -value[a])[:7]
    assert list(df["arch_id"][:len(expected)]) == expected
    assert calls == [(len(ids), "nwot")]  # the pool is scored once, for free
    assert len(df) == 10


def test_warm_start_ranks_a_pool_by_the_real_proxy(tabular):
    """A random pool scored with synflow on built models: the first archs measured are the
    pool's top by `zero_cost.score` computed here, one model at a time."""
    from nasbench.tabular.builtin_space import build_model

    def build(arch):
        torch.manual_seed(0)
        return build_model(arch)

    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4) % 10
    scorer = zero_cost.ArchScorer(build, x, y)
    pools = []

    def spy(archs, proxy):
        pools.append(list(archs))
        return scorer(archs, proxy)

    df = run_search(tabular, "random", 8, spy, batch_size=4,
                    zc_warm_start={"proxy": "synflow", "pool": 12, "top": 4})
    (pool,) = pools
    assert len({tabular.space.arch_id(a) for a in pool}) == 12
    scores = [zero_cost.score(build(a), x, y, proxy="synflow") for a in pool]
    best = [tabular.space.arch_id(pool[i]) for i in np.argsort(scores)[::-1][:4]]
    assert list(df["arch_id"][:4]) == best


def test_warm_start_settings_are_checked():
    import search

    with pytest.raises(UserError, match="unknown zero-cost proxy 'gradsing'"):
        search.create_optimizer("linas", zc_warm_start={"proxy": "gradsing"})
    with pytest.raises(UserError, match="pool"):
        search.create_optimizer("random", zc_warm_start={"proxy": "snip", "pool": 0})


def test_warm_start_without_scorer_is_user_error(tabular):
    with pytest.raises(UserError, match="zero-cost scorer"):
        run_search(tabular, "random", 4, None, zc_warm_start={"proxy": "snip"})


# ---------------------------------------------------------------- benchmark

def test_bench_quick_mode_writes_taus_and_warm_start_runs(tmp_path):
    import json

    from nasbench.bench.registry import BenchOptions, run_benchmark

    report, path = run_benchmark("zero_cost", BenchOptions(quick=True, out_dir=tmp_path))
    assert path == tmp_path / "zero_cost.json" and json.loads(path.read_text())["quick"]
    figures = report["figures"]
    tau = figures["ranking"]["kendall_tau_top1"]
    assert set(tau) == {"synflow", "nwot", "params (baseline)", "macs (baseline)"}
    assert all(-1 <= v <= 1 for v in tau.values())
    runs = figures["warm_start"]["runs"]
    assert set(runs) == {"none", "synflow"}
    for run in runs.values():
        reach = run["evals_to_hv0.5"]
        assert len(reach["per_seed"]) == 1 and 0 < reach["mean_censored"] <= 6


def test_bench_refuses_an_unknown_proxy_before_any_work(tmp_path):
    from nasbench.bench.registry import BenchOptions, run_benchmark

    with pytest.raises(UserError, match="unknown zero-cost proxy 'synflo'"):
        run_benchmark("zero_cost", BenchOptions(quick=True, out_dir=tmp_path,
                                                params={"warm_proxies": "synflo"}))
    assert not (tmp_path / "zero_cost.json").exists()


def test_evaluations_to_reach_is_the_first_prefix_over_target():
    import pandas as pd

    from nasbench.bench.zero_cost import evaluations_to_reach

    directions = {"top1": "max", "latency_ms": "min"}
    ref = {"top1": 0.0, "latency_ms": 1.0}
    df = pd.DataFrame({"top1": [0.5, 0.5, 1.0], "latency_ms": [0.5, 0.0, 0.0]})
    # HV of the prefixes: 0.25, 0.5, 1.0 (of a true 1.0)
    assert evaluations_to_reach(df, directions, ref, 1.0, [0.2, 0.3, 0.5, 0.9, 1.01]) == {
        0.2: 1, 0.3: 2, 0.5: 2, 0.9: 3, 1.01: None}


def test_linas_zc_features_join_the_encoding_its_predictors_see(tabular, monkeypatch):
    """`zc_features: [nwot]`: every regressor LINAS fits gets the one-hot encoding plus the
    arch's signed-log proxy score, each arch scored once."""
    import search.optimizers.linas as linas

    space = tabular.space
    score = {aid: 10.0 ** (i % 5) for i, aid in enumerate(sorted(tabular.table.index))}
    scored = []

    def scorer(archs, proxy):
        scored.extend(space.arch_id(a) for a in archs)
        return [score[space.arch_id(a)] for a in archs]

    seen = []
    fit = linas.fit_quietly

    def recording_fit(model, X, y):
        seen.append(np.array(X))
        return fit(model, X, y)

    monkeypatch.setattr(linas, "fit_quietly", recording_fit)
    df = run_search(tabular, "linas", 14, scorer, pop_size=6, inner_generations=3,
                    zc_features=["nwot"], regressors=["ridge"])
    width = int(space.num_choices.sum())
    assert seen and all(X.shape[1] == width + 1 for X in seen)
    first = seen[0]
    rows = df.iloc[: len(first)]
    assert np.allclose(first[:, -1], np.log1p([score[a] for a in rows["arch_id"]]))
    assert len(scored) == len(set(scored))  # cached: no arch scored twice
    import search

    with pytest.raises(UserError, match="unknown zero-cost proxy 'zen'"):
        search.create_optimizer("linas", zc_features=["zen"])
