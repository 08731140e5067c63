"""Joint architecture × sparsity search (SuperTickets-style): prune while you search.

`PrunedSubnets(supernet, ...)` stands where a supernet stands in a search: its `space` is the
supernet's plus a `sparsity` dimension, and an arch of it is a subnet pruned to that sparsity —
the subnet is extracted, then pruned by a registered pruner (unstructured masks baked into the
weights, or structured channel removal that physically shrinks it). Every objective then
measures that pruned module: `top1` recalibrates its BN on the run's fixed subset first,
`latency_ms` times it (a structured shrink is measurably faster; unstructured zeros are not on
dense kernels), `params`/`macs` count its dense tensors and `nonzero_params` what a sparse
format stores. `export` extracts the same pruned module, so it writes the pruned subnet.

Pruning is deterministic (magnitude-based, or the DP on the fixed calibration batches), so
the module an arch names is the same in every process. The last few are cached, because one
evaluation asks each objective in turn for the same arch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nasbench_core.errors import UserError
from supernets.base import prepare_input
from supernets.space import Dimension, SearchSpace

SPARSITY = "sparsity"
KINDS = ("unstructured", "structured")


def check_method(kind: str, method: str, sparsities: Sequence[float],
                 options: Mapping[str, Any] | None = None) -> None:
    """One line for a kind, method, sparsity or pruner option (`round_to=0`) this search cannot
    use (before any work)."""
    import pruners

    if kind not in KINDS:
        raise UserError(f"search.prune.kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    known = pruners.list_pruners(kind=kind)
    if method not in known:
        raise UserError(f"search.prune.method {method!r} is not one of the {kind} pruners: "
                        f"{', '.join(known)}")
    if not sparsities or len(set(sparsities)) != len(sparsities):
        raise UserError("search.prune.sparsity must list distinct values, e.g. [0.0, 0.5, 0.8]")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise UserError(f"search.prune.sparsity {s} is outside [0, 1)")
    if options:
        validate = pruners.validate_shrink_options if kind == "structured" else pruners.validate_prune_options
        validate(method, dict(options), where="search.prune.options")


class PrunedSubnets(nn.Module):
    """A supernet's subnets, each pruned to the arch's `sparsity`; see the module doc."""

    cache_size = 4

    def __init__(self, supernet: nn.Module, *, kind: str, method: str, sparsities: Sequence[float],
                 options: Mapping[str, Any] | None = None, calibration: Sequence | None = None):
        super().__init__()
        check_method(kind, method, sparsities, options)
        object.__setattr__(self, "supernet", supernet)  # not a child: its BN stays untouched
        self.kind, self.method = kind, method
        self.options = dict(options or {})
        self.calibration = calibration
        ordered = tuple(sorted(float(s) for s in sparsities))
        self.space = SearchSpace([*supernet.space.dims, Dimension(SPARSITY, ordered)])
        self._cache: OrderedDict[str, nn.Module] = OrderedDict()
        self.current: nn.Module | None = None
        self._active: dict | None = None

    def base_arch(self, arch: Mapping[str, Any]) -> dict:
        return {k: v for k, v in arch.items() if k != SPARSITY}

    def subnet(self, arch: Mapping[str, Any]) -> nn.Module:
        """The pruned module of `arch` (cached: the same object until evicted)."""
        arch = self.space.validate(arch)
        aid = self.space.arch_id(arch)
        if aid in self._cache:
            self._cache.move_to_end(aid)
            return self._cache[aid]
        module = self._pruned(self.base_arch(arch), float(arch[SPARSITY]))
        self._cache[aid] = module
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return module

    def _pruned(self, base: dict, sparsity: float) -> nn.Module:
        import pruners
        from pruners.masks import make_permanent
        from search.costs import subnet_input_shape

        module = self.supernet.extract(base).eval()
        if sparsity == 0.0:
            return module
        param = next(module.parameters())
        shape = subnet_input_shape(self.supernet, base, None)
        example = torch.zeros(1, *shape, dtype=param.dtype, device=param.device)
        if self.kind == "structured":
            return pruners.shrink(module, self.method, sparsity, example_input=example,
                                  **self.options).eval()
        needs = pruners.registry.PRUNERS.entry(self.method).meta["needs"]
        extra: dict[str, Any] = {}
        if "data" in needs and self.calibration is not None:
            extra["data"] = self.calibration
        if "example_input" in needs:
            extra["example_input"] = example
        pruners.prune(module, self.method, sparsity, **self.options, **extra)
        return make_permanent(module)

    # -- what objectives and export use of a supernet ---------------------------------------
    def set_active(self, arch: Mapping[str, Any]) -> None:
        self._active = dict(self.space.validate(arch))
        self.current = self.subnet(self._active)  # a child while active: BN recalibration sees it

    @property
    def active_arch(self) -> dict | None:
        return self._active

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        return self.subnet(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.current is None:
            raise UserError("PrunedSubnets: set_active(arch) first")
        return self.current(prepare_input(x, self._active))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("in_chans", "num_classes", "family"):
                return getattr(self.supernet, name)
            raise
