"""Hot paths with C++/CUDA kernels and PyTorch fallbacks: exact global magnitude selection,
fused mask ops, and the mixture-of-supernets routing and mixing.

Every op gives the same result on every backend; `backend()` names the active one.
"""

from cuda_ext._torch_ops import mos_coefficients
from cuda_ext.ops import (
    apply_masks_,
    backend,
    global_magnitude_masks,
    iter_global_magnitude_masks,
    kth_smallest_abs,
    lamp_scores,
    masks_from_threshold,
    mos_mix,
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
    "mos_coefficients",
    "mos_mix",
    "rewind_",
]
