"""Zero-cost proxies: one forward/backward pass on one batch scores an untrained network.

`score(model, inputs, targets, proxy=...)` runs one proxy on a deep copy of `model`, so the
model's weights, mode, `requires_grad` flags and `.grad`s are left as they were. Every proxy is
"higher is better". Gradients come from `torch.autograd.grad` / `torch.func`, never
`.backward()` into `.grad`.

| proxy | what | BN / mode |
|---|---|---|
| gradsign | Σ_params \\|Σ_samples sign(∂ℓ_i/∂θ)\\| (Zhang & Jia, ICLR 2022) | eval: running stats |
| synflow | Σ_conv,linear \\|θ ⊙ ∂R/∂θ\\|, R = Σ f_\\|θ\\|(1), float64 (Tanaka et al.) | BN removed |
| snip | Σ_conv,linear \\|θ ⊙ ∂L/∂θ\\| (Lee et al.) | train: batch stats |
| grad_norm | Σ_conv,linear ‖∂L/∂W‖₂ per layer | train |
| jacov | −Σ log(λ+k) + 1/(λ+k), λ = eigenvalues of corr(∂Σf/∂x_i) (Mellor et al. v1) | train |
| nwot | log\\|det K\\|, K_ij = N_A − Hamming(c_i, c_j) over ReLU codes (Mellor et al. 2021) | train |

jacov is −inf when a sample's input gradient is constant (its correlation is undefined); nwot
reads the binary codes of `nn.ReLU` modules and refuses a model without any.

Why GradSign uses BN in eval mode: its gradients are per sample, and in train mode BatchNorm
ties the samples of a batch together (and cannot normalise one sample of a BatchNorm1d). In
eval mode BN is a fixed affine map (at init: running mean 0, variance 1, so the map it is
initialised to), and each sample's gradient depends on that sample alone. That also lets
`torch.func.vmap` compute all per-sample gradients in one pass; a model vmap cannot trace
falls back to a loop over samples with the same result.

Synflow follows Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (ICLR 2021):
BatchNorm layers are replaced by identities (data-free: with an all-ones input the batch
statistics would zero every channel), every parameter is replaced by its absolute value, the
network runs in double precision on a single all-ones input, and the score sums over the
weights of convolution and linear layers. snip, grad_norm and jacov follow the same paper's
definitions and mode (train, one batch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasbench_core.errors import UserError
from nasbench_core.registry import Registry

LossFn = Callable[[Tensor, Tensor], Tensor]
Proxy = Callable[[nn.Module, Tensor, Tensor, LossFn], float]

PROXIES: Registry[Proxy] = Registry("zero-cost proxy")

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers whose weights synflow, snip and grad_norm sum over (the papers' "param" mode)."""


def list_proxies() -> list[str]:
    return PROXIES.list()


def score(model: nn.Module, inputs: Tensor, targets: Tensor, *, proxy: str,
          loss_fn: LossFn | None = None) -> float:
    """`proxy`'s score of `model` on one batch; `model` itself is not modified."""
    fn = PROXIES.get(proxy)
    if inputs.shape[0] < 2:
        raise UserError(f"zero-cost proxy {proxy!r} needs a batch of at least 2 samples, "
                        f"got {inputs.shape[0]}")
    net = copy.deepcopy(model)
    net.requires_grad_(True)
    device = next((p.device for p in net.parameters()), inputs.device)
    with torch.enable_grad():
        return float(fn(net, inputs.to(device), targets.to(device), loss_fn or F.cross_entropy))


class ArchScorer:
    """`scorer(archs, proxy) -> scores`: each arch built by `build(arch)` and scored on one fixed
    batch (resized per arch by `prepare(x, arch)` when given). What a zero-cost objective and an
    optimizer's zero-cost warm start (`SearchProblem.zero_cost`) score archs with."""

    def __init__(self, build: Callable[[Mapping[str, Any]], nn.Module], inputs: Tensor,
                 targets: Tensor, *, loss_fn: LossFn | None = None,
                 prepare: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None):
        self.build, self.inputs, self.targets = build, inputs, targets
        self.loss_fn, self.prepare = loss_fn, prepare

    @classmethod
    def for_supernet(cls, supernet: nn.Module, loader: Iterable, *,
                     device: str = "cpu") -> ArchScorer:
        """Subnets `supernet.extract(arch)` on `loader`'s first batch, at each arch's resolution."""
        from supernets.base import prepare_input

        batch = next(iter(loader), None)
        if batch is None:
            raise UserError("zero-cost scoring needs a batch, and the loader is empty")
        return cls(lambda arch: supernet.extract(arch).to(device), batch[0].to(device),
                   batch[1].to(device), prepare=prepare_input)

    def __call__(self, archs: Sequence[Mapping[str, Any]], proxy: str) -> list[float]:
        PROXIES.get(proxy)  # an unknown name fails before any model is built
        return [score(self.build(a), self.inputs if self.prepare is None
                      else self.prepare(self.inputs, a), self.targets, proxy=proxy,
                      loss_fn=self.loss_fn) for a in archs]


def _weights(net: nn.Module) -> list[Tensor]:
    weights = [m.weight for m in net.modules() if isinstance(m, WEIGHTED)]
    if not weights:
        raise UserError("zero-cost proxy: the model has no convolution or linear layer")
    return weights


@PROXIES.register("gradsign")
def gradsign(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    net.eval()
    return float(sum(_signs(g).sum(dim=0).abs().sum() for g in _per_sample_grads(net, x, y, loss_fn)))


SIGN_RTOL = 64
"""A gradient within `SIGN_RTOL` machine epsilons of zero, relative to the largest entry of that
sample's gradient of that parameter, has sign 0: its sign is rounding noise (a vmap and a loop
disagree on such exact-zero-in-theory entries, which quantised weights produce in numbers)."""


def _signs(g: Tensor) -> Tensor:
    """sign(g) per sample (dim 0), with rounding-level entries counted as exact zeros."""
    scale = g.abs().reshape(len(g), -1).amax(dim=1).reshape(-1, *([1] * (g.dim() - 1)))
    return torch.where(g.abs() <= SIGN_RTOL * torch.finfo(g.dtype).eps * scale, 0.0, g.sign())


def _per_sample_grads(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> list[Tensor]:
    """[N, *param.shape] gradient of each sample's loss, for every parameter."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(net, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    try:
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
        return [per_sample[n] for n in params]
    except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one sample at a time
        leaves = list(net.parameters())
        rows = [torch.autograd.grad(loss_fn(net(x[i:i + 1]), y[i:i + 1]), leaves,
                                    allow_unused=True, materialize_grads=True)
                for i in range(len(x))]
        return [torch.stack(g) for g in zip(*rows, strict=True)]


@PROXIES.register("synflow")
def synflow(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    _remove_batchnorm(net)
    net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = _weights(net)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    grads = torch.autograd.grad(net(ones).sum(), weights, allow_unused=True,
                                materialize_grads=True)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads, strict=True)))


def _remove_batchnorm(net: nn.Module) -> None:
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        else:
            _remove_batchnorm(child)


def _batch_grads(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[list, tuple]:
    net.train()
    weights = _weights(net)
    grads = torch.autograd.grad(loss_fn(net(x), y), weights, allow_unused=True,
                                materialize_grads=True)
    return weights, grads


@PROXIES.register("snip")
def snip(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    weights, grads = _batch_grads(net, x, y, loss_fn)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads, strict=True)))


@PROXIES.register("grad_norm")
def grad_norm(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    _, grads = _batch_grads(net, x, y, loss_fn)
    return float(sum(g.norm() for g in grads))


JACOV_K = 1e-5


@PROXIES.register("jacov")
def jacov(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    net.train()
    x = x.detach().clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(net(x).sum(), x)
    corr = np.corrcoef(jac.reshape(len(x), -1).double().cpu().numpy())
    if not np.isfinite(corr).all():  # a sample with a constant Jacobian: no correlation defined
        return float("-inf")
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + JACOV_K) + 1.0 / (v + JACOV_K)))


@PROXIES.register("nwot")
def nwot(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
    net.train()
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise UserError("zero-cost proxy 'nwot' needs nn.ReLU modules; the model has none")
    n = len(x)
    kernel = torch.zeros((n, n), dtype=torch.float64, device=x.device)

    def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        nonlocal kernel
        codes = (out.detach().reshape(n, -1) > 0).double()
        kernel = kernel + codes @ codes.T + (1 - codes) @ (1 - codes).T

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(kernel)[1])
