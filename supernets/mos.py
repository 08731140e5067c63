"""Mixture-of-supernets (Jawahar et al.): architecture-routed expert weights for elastic layers.

A MoS layer holds m expert copies of its weight and a small router MLP that maps the active
arch's normalised encoding (`SearchSpace.features`) to mixing coefficients α:

- `layer` routing: α = softmax(router(f)) in R^m and W = Σ_i α_i E_i[:out, :in] (bias alike);
- `neuron` routing: the router gives m·out_max logits, the active out rows are softmaxed over
  experts and W[r, :] = Σ_i α_{r,i} E_i[r, :in].

Experts are stored in the layer's own `weight`/`bias`, stacked on a new first axis
(`(m, out, in[, 1, 1])`, `(m, out)`), and the active block of both is mixed at once.
Forward and extraction share that mixture, so an extracted subnet is one plain
`nn.Linear`/`nn.Conv2d` per layer. Channel re-ordering (`permute_`) sees the stack through
`channel_view` and moves all experts together, and a neuron router's logit rows with their
output channel, so re-ordering keeps every arch's function.

Initialisation: every expert is the dense layer's weight plus noise that sums to zero over the
experts, and the router's last layer starts at zero, so α starts uniform and the mixed weight
equals the dense weight: a new MoS supernet computes exactly what the plain one does (training
starts from the same point). The noise breaks the symmetry between experts; identical experts
would give the router a zero gradient and stay identical forever.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cuda_ext import mos_coefficients, mos_mix
from nasbench_core.errors import ConfigError
from supernets.ops import DynamicConv2d, DynamicLinear
from supernets.ops.versions import weights_stamp

ROUTINGS = ("layer", "neuron")
EXPERT_NOISE = 0.1  # expert init noise, relative to the std of the dense weight
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "vit": ("blocks.*.mlp.fc1", "blocks.*.mlp.fc2"),
    "mbv3": ("blocks.*.expand", "blocks.*.project"),
    "resnet": ("blocks.*.conv1", "blocks.*.conv3"),  # the 1x1 convs of bottleneck blocks
}


@dataclass(frozen=True)
class MoSConfig:
    """A validated `mos:` section: routing type, expert count, target layers, router width."""

    type: str
    experts: int
    layers: tuple[str, ...]
    router_hidden: int = 128

    @classmethod
    def parse(cls, cfg: Mapping[str, Any], family: str | None = None) -> MoSConfig:
        """Validate a user mapping; `layers` defaults to the family's FFN/pointwise layers."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"mos: expected a mapping with type/experts/layers, got {cfg!r}")
        allowed = ("type", "experts", "layers", "router_hidden")
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown key mos.{unknown[0]}; allowed: {', '.join(allowed)}")
        kind = cfg.get("type")
        if kind not in ROUTINGS:
            raise ConfigError(f"mos.type: expected one of {ROUTINGS}, got {kind!r}")
        experts = cfg.get("experts")
        if not _is_int(experts) or experts < 1:
            raise ConfigError(f"mos.experts: expected an integer >= 1, got {experts!r}")
        hidden = cfg.get("router_hidden", 128)
        if not _is_int(hidden) or hidden < 1:
            raise ConfigError(f"mos.router_hidden: expected an integer >= 1, got {hidden!r}")
        layers = cfg.get("layers")
        if layers is None:
            if family not in DEFAULT_LAYERS:
                raise ConfigError(f"mos.layers: required for supernet family {family!r}")
            layers = DEFAULT_LAYERS[family]
        if isinstance(layers, str):
            layers = [layers]
        if not layers or not all(isinstance(p, str) and p for p in layers):
            raise ConfigError(f"mos.layers: expected a list of module-name patterns, got {layers!r}")
        return cls(kind, int(experts), tuple(layers), int(hidden))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Router(nn.Module):
    """Linear(d_arch, hidden) -> ReLU -> Linear(hidden, n); the last layer starts at zero.

    `cuda_ext.mos_mix` evaluates it together with the mixing it drives (one autograd node when
    compiled), so this module only holds and initialises the parameters.
    """

    def __init__(self, d_arch: int, hidden: int, n_logits: int):
        super().__init__()
        self.hidden = nn.Linear(d_arch, hidden)
        self.logits = nn.Linear(hidden, n_logits)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.hidden.weight, self.hidden.bias, self.logits.weight, self.logits.bias


class _Mixture:
    """Expert storage, routing and mixing shared by the MoS linear and conv layers.

    Experts are stacked expert-first, `(m, out, in, ...)` and `(m, out)`: mixing is then a
    weighted sum of m contiguous blocks, several times faster than over a trailing axis. The
    routing and mixing run in `cuda_ext.mos_mix` (compiled kernels or the PyTorch path).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    active_out: int
    active_in: int

    def _init_mixture(self, routing: str, experts: int, d_arch: int, router_hidden: int,
                      out_max: int) -> None:
        if routing not in ROUTINGS:
            raise ConfigError(f"mos.type: expected one of {ROUTINGS}, got {routing!r}")
        if experts < 1:
            raise ConfigError(f"mos.experts: expected an integer >= 1, got {experts!r}")
        self.routing, self.num_experts = routing, experts
        self.router = Router(d_arch, router_hidden, experts * (out_max if routing == "neuron" else 1))
        self._features: torch.Tensor | None = None
        self._stamp = 0
        self._inference_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self.weight = nn.Parameter(_spread(self.weight.detach(), experts, EXPERT_NOISE))
        if self.bias is not None:
            self.bias = nn.Parameter(_spread(self.bias.detach(), experts, 0.0))

    def load_dense(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Re-initialise the experts around a dense layer's weights (see module docstring)."""
        with torch.no_grad():
            self.weight.copy_(_spread(weight, self.num_experts, EXPERT_NOISE))
            if bias is not None:
                self.bias.copy_(_spread(bias, self.num_experts, 0.0))

    def on_set_active(self, arch: Mapping[str, Any], features: torch.Tensor) -> None:
        """Called by `Supernet.set_active`: remember the router input of the new arch."""
        if features.shape != (self.router.hidden.in_features,):
            raise ValueError(
                f"MoS router expects {self.router.hidden.in_features} arch features, "
                f"got shape {tuple(features.shape)}"
            )
        self._features = features.detach().to(self.weight.device, self.weight.dtype)
        self._stamp += 1

    @staticmethod
    def channel_view(tensor: torch.Tensor) -> torch.Tensor:
        """A stacked weight or bias as (out, in, ..., m), so channel code sees the usual axes."""
        return tensor.movedim(0, -1)

    def on_permute_outputs(self, order: torch.Tensor) -> None:
        """Neuron routing: output r's m logits (rows r·m .. r·m+m-1) follow channel r."""
        if self.routing != "neuron":
            return
        m = self.num_experts
        rows = (order.view(-1, 1) * m + torch.arange(m, device=order.device)).reshape(-1)
        with torch.no_grad():
            for t in (self.router.logits.weight, self.router.logits.bias):
                t.copy_(t.index_select(0, rows.to(t.device)))

    def mixing_coefficients(self) -> torch.Tensor:
        """α of the active arch: (m,) for layer routing, (out_active, m) for neuron routing."""
        rows = self.active_out if self.routing == "neuron" else 1
        coef = mos_coefficients(self._arch_features(), *self.router.parts(), self.num_experts, rows)
        return coef[:, 0] if self.routing == "layer" else coef.t()

    def _arch_features(self) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError("MoS layer has no arch features: call Supernet.set_active first")
        w = self.weight
        if self._features.device != w.device or self._features.dtype != w.dtype:
            self._features = self._features.to(w.device, w.dtype)  # the net moved or was cast
        return self._features

    def mixed_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The active arch's mixed weight and bias.

        Without gradients they are kept until the arch, the active size or any expert or
        router tensor changes, so evaluating one arch over many batches routes once.
        """
        if torch.is_grad_enabled():
            return self._mix()
        key = (self._stamp, self.active_out, self.active_in, self.weight.device, self.weight.dtype,
               *weights_stamp((self.weight, self.bias, *self.router.parameters())))
        if self._inference_cache is None or self._inference_cache[0] != key:
            self._inference_cache = (key, self._mix())
        return self._inference_cache[1]

    def _mix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return mos_mix(self._arch_features(), *self.router.parts(), self.weight, self.bias,
                       self.active_out, self.active_in, self.routing == "neuron")

    def active_weight(self) -> torch.Tensor:
        return self.mixed_parameters()[0]

    def active_bias(self) -> torch.Tensor | None:
        return self.mixed_parameters()[1]

    def _mos_repr(self) -> str:
        return f", mos={self.routing}x{self.num_experts}"


def _spread(dense: torch.Tensor, experts: int, noise: float) -> torch.Tensor:
    """`experts` copies of `dense` stacked on a new first axis, plus noise summing to zero."""
    stacked = dense.unsqueeze(0).repeat(experts, *([1] * dense.dim()))
    if noise > 0 and experts > 1:
        eps = torch.randn_like(stacked) * (noise * dense.std().clamp_min(1e-8))
        stacked = stacked + (eps - eps.mean(0, keepdim=True))
    return stacked.contiguous()


class MoSDynamicLinear(_Mixture, DynamicLinear):
    """A `DynamicLinear` whose active weight is an arch-routed mixture of m experts."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 routing: str = "layer", experts: int = 2, d_arch: int, router_hidden: int = 128):
        DynamicLinear.__init__(self, in_features, out_features, bias=bias)
        self._init_mixture(routing, experts, d_arch, router_hidden, out_features)

    @classmethod
    def from_dense(cls, layer: DynamicLinear, cfg: MoSConfig, d_arch: int) -> MoSDynamicLinear:
        mos = cls(layer.in_features, layer.out_features, layer.bias is not None,
                  routing=cfg.type, experts=cfg.experts, d_arch=d_arch,
                  router_hidden=cfg.router_hidden)
        mos.load_dense(layer.weight, layer.bias)
        mos.set_active(layer.active_out, layer.active_in)
        return mos.to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.mixed_parameters())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._mos_repr()


class MoSDynamicConv2d(_Mixture, DynamicConv2d):
    """A pointwise (1x1) `DynamicConv2d` whose active weight is an arch-routed expert mixture."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 bias: bool = False, routing: str = "layer", experts: int = 2, d_arch: int,
                 router_hidden: int = 128):
        DynamicConv2d.__init__(self, in_channels, out_channels, 1, stride, bias=bias)
        self._init_mixture(routing, experts, d_arch, router_hidden, out_channels)

    @classmethod
    def from_dense(cls, layer: DynamicConv2d, cfg: MoSConfig, d_arch: int) -> MoSDynamicConv2d:
        if not is_pointwise(layer):
            raise ConfigError(
                f"MoS supports only pointwise (1x1, non-depthwise) convs, got kernels "
                f"{list(layer.kernel_sizes)}{' depthwise' if layer.depthwise else ''}"
            )
        mos = cls(layer.in_channels, layer.out_channels, layer.stride, bias=layer.bias is not None,
                  routing=cfg.type, experts=cfg.experts, d_arch=d_arch,
                  router_hidden=cfg.router_hidden)
        mos.padding = layer.padding
        mos.load_dense(layer.weight, layer.bias)
        mos.set_active(layer.active_out, layer.active_in)
        return mos.to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.mixed_parameters()
        return F.conv2d(x, weight, bias, self.stride, self.active_padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._mos_repr()


def is_pointwise(layer: DynamicConv2d) -> bool:
    return layer.kernel_sizes == (1,) and not layer.depthwise


def _eligible(module: nn.Module) -> bool:
    if isinstance(module, _Mixture):
        return False
    if isinstance(module, DynamicConv2d):
        return is_pointwise(module)
    return isinstance(module, DynamicLinear)


def _targets(net: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the layers the patterns select; a pattern selecting nothing is an error."""
    modules = dict(net.named_modules())
    eligible = [n for n, m in modules.items() if _eligible(m)]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern)]
        for name in matched:
            m = modules[name]
            if isinstance(m, DynamicConv2d) and not isinstance(m, _Mixture) and not is_pointwise(m):
                raise ConfigError(
                    f"mos.layers pattern {pattern!r} selects {name}, a {m.kernel_sizes[-1]}x"
                    f"{m.kernel_sizes[-1]}{' depthwise' if m.depthwise else ''} conv; MoS needs "
                    "DynamicLinear or pointwise (1x1) DynamicConv2d layers"
                )
        hits = [n for n in matched if n in eligible]
        if not hits:
            sample = ", ".join(eligible[:6]) + (", ..." if len(eligible) > 6 else "")
            raise ConfigError(
                f"mos.layers pattern {pattern!r} matches no DynamicLinear or 1x1 DynamicConv2d "
                f"layer; eligible layers: {sample or 'none'}"
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def apply_mos(net: nn.Module, mos: Mapping[str, Any] | MoSConfig) -> nn.Module:
    """Replace the selected elastic layers of a supernet by MoS layers, keeping their weights.

    Returns `net` (modified in place). The router input size is the number of dimensions of
    `net.space`; the active arch, if any, is re-applied so the new routers see its features.
    """
    cfg = mos if isinstance(mos, MoSConfig) else MoSConfig.parse(mos, getattr(net, "family", None))
    if any(isinstance(m, _Mixture) for m in net.modules()):
        raise ConfigError("this supernet already has mixture-of-supernets layers")
    d_arch = len(net.space)
    for name in _targets(net, cfg.layers):
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        layer = getattr(parent, attr)
        kind = MoSDynamicConv2d if isinstance(layer, DynamicConv2d) else MoSDynamicLinear
        replacement = kind.from_dense(layer, cfg, d_arch)
        replacement.train(layer.training)
        setattr(parent, attr, replacement)
    net.set_active(net.active_arch)
    return net


def mos_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The MoS layers of a network by qualified name (empty for a plain supernet)."""
    return {n: m for n, m in net.named_modules() if isinstance(m, _Mixture)}


def mixture_overhead(net: nn.Module) -> dict[str, int]:
    """Parameter counts: all, extra expert copies (m-1 per MoS weight) and routers."""
    total = sum(p.numel() for p in net.parameters())
    experts = routers = 0
    for m in mos_layers(net).values():
        for p in (m.weight, m.bias):
            if p is not None:
                experts += p.numel() // m.num_experts * (m.num_experts - 1)
        routers += sum(p.numel() for p in m.router.parameters())
    return {"total": total, "extra_experts": experts, "routers": routers}
