"""N:M semi-structured sparsity (2:4 for sparse tensor cores) in torch's prune form.

`pruners.prune(model, "n_m", 0.5, n=2, m=4)`: each weight is read as a matrix
[out, in·kh·kw] (torch's own flattening, the reduction dimension of the layer's GEMM), and in
every run of m consecutive weights along a row the n largest |w| are kept. Ties go to the lower
index (the earlier weight is kept), so the masks are a function of the weights alone. The
sparsity must be 1 − n/m, and every selected layer's row length a multiple of m (exclude the
others, e.g. `prune_first=False` for a 3-channel stem).

The masks are exact on any device, but on a CPU they only zero weights: no kernel skips them,
so nothing gets faster. On CUDA, `to_semi_structured(model)` swaps 2:4 Linear weights for
`torch.sparse.to_sparse_semi_structured` tensors, which run on the sparse tensor cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import nn

from pruners.errors import PruneError
from pruners.options import PrunerOptions
from pruners.registry import register_pruner
from pruners.selection import Target


class NMOptions(PrunerOptions):
    n: Annotated[int, Field(ge=1)] = 2
    m: Annotated[int, Field(ge=2)] = 4

    @model_validator(mode="after")
    def _n_below_m(self) -> NMOptions:
        if self.n >= self.m:
            raise ValueError(f"n={self.n} must be below m={self.m}")
        return self


def n_m_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask: the n largest |w| of every m consecutive weights of each row
    (`weight.reshape(out, -1)`), ties to the lower index."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise PruneError(f"a row of {rows.shape[1]} weights does not split into groups of m={m}")
    runs = rows.abs().reshape(rows.shape[0], -1, m)
    order = torch.sort(runs, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return keep.reshape(weight.shape)


def _check(targets: Sequence[Target], k: int, o: NMOptions) -> None:
    """Before any weight changes: rows split into runs of m, and k is exactly (1 − n/m)·N."""
    for t in targets:
        row = t.numel // t.param.shape[0]
        if row % o.m:
            raise PruneError(f"n_m: {t.name} has rows of {row} weights, not a multiple of m={o.m}; "
                             "exclude it (exclude=[...] or prune_first=False)")
    n_total = sum(t.numel for t in targets)
    if k != n_total // o.m * (o.m - o.n):
        raise PruneError(f"n_m with n={o.n}, m={o.m} prunes exactly {1 - o.n / o.m:g} of the weights; "
                         f"sparsity {k / n_total:.3g} disagrees")


@register_pruner("n_m", options=NMOptions, kind="semi_structured", check=_check)
def _n_m(model: nn.Module, targets: Sequence[Target], k: int, o: NMOptions) -> list[torch.Tensor]:
    return [n_m_mask(t.tensor, o.n, o.m) for t in targets]


def to_semi_structured(model: nn.Module) -> list[str]:
    """Swap each 2:4-sparse Linear weight (masks made permanent) for a CUDA semi-structured
    sparse tensor, so matmuls use the sparse kernels; returns the swapped layers' names."""
    from torch.sparse import to_sparse_semi_structured

    swapped = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or hasattr(module, "weight_orig"):
            continue
        w = module.weight.detach()
        if not w.is_cuda:
            raise PruneError("to_semi_structured needs the model on a CUDA device")
        if w.shape[1] % 4 or int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) > 2:
            continue  # not 2:4
        module.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        swapped.append(name)
    return swapped
