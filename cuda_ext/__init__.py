"""Exact global magnitude selection and fused mask ops, with C++/CUDA kernels and PyTorch fallbacks.

Every op gives the same result on every backend; `backend()` names the active one.
"""

from cuda_ext.ops import (
    apply_masks_,
    backend,
    global_magnitude_masks,
    iter_global_magnitude_masks,
    kth_smallest_abs,
    lamp_scores,
    masks_from_threshold,
    rewind_,
)

__all__ = [
    "apply_masks_",
    "backend",
    "global_magnitude_masks",
    "iter_global_magnitude_masks",
    "kth_smallest_abs",
    "lamp_scores",
    "masks_from_threshold",
    "rewind_",
]
