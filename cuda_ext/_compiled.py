"""Adapter giving a compiled extension module the same interface as `cuda_ext._torch_ops`."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from cuda_ext._torch_ops import nan_error


class CompiledOps:
    """Calls into one built extension (CPU or CUDA); NaN reports become UserErrors."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def kth_smallest_abs(self, tensors: Sequence[Tensor], k: int) -> float:
        key = self.module.kth_key(list(tensors), k)
        if key < 0:
            raise nan_error(-key - 1)
        return float(torch.tensor([key], dtype=torch.int32).view(torch.float32).item())

    def count_below_and_ties(self, tensors: Sequence[Tensor], tkey: int) -> tuple[int, list[int]]:
        below, nan_index, *ties = self.module.count_below_and_ties(list(tensors), tkey).tolist()
        if nan_index >= 0:
            raise nan_error(nan_index)
        return below, ties

    def masks_from_threshold(
        self, tensors: Sequence[Tensor], tkey: int, ties_to_prune: int, ties: Sequence[int]
    ) -> list[Tensor]:
        return self.module.masks_from_threshold(list(tensors), tkey, ties_to_prune, list(ties))

    def apply_masks_(self, tensors: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
        self.module.apply_masks_(list(tensors), list(masks))

    def rewind_(
        self, tensors: Sequence[Tensor], initial: Sequence[Tensor], masks: Sequence[Tensor]
    ) -> None:
        self.module.rewind_(list(tensors), list(initial), list(masks))

    def lamp_scores(self, tensor: Tensor) -> Tensor:
        return self.module.lamp_scores(tensor)

    def mos_mix(self, features: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                experts: Tensor, biases: Tensor | None, out: int, inp: int,
                neuron: bool) -> tuple[Tensor, Tensor | None]:
        mixed = self.module.mos_mix(features, w1, b1, w2, b2, experts, biases, out, inp, neuron)
        return mixed[0], mixed[1] if len(mixed) > 1 else None
