"""Export a module to ONNX with a dynamic batch axis and verify it with onnxruntime.

Reusable by search (extracted subnets) and pruners (pruned models): `export_onnx` writes the
graph atomically and returns the max abs difference between PyTorch and onnxruntime outputs on
a batch of a *different* size than the one traced, so the dynamic axis is checked too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nasbench_core.atomic import atomic_path
from nasbench_core.errors import UserError

DEFAULT_ATOL = 1e-4


class ExportMismatchError(UserError):
    """onnxruntime disagrees with PyTorch beyond the tolerance: the export is not trusted."""


@dataclass(frozen=True)
class OnnxExport:
    onnx_path: Path
    max_abs_diff: float
    opset: int


def export_onnx(
    module,
    input_shape: Sequence[int],
    path: str | Path,
    *,
    atol: float = DEFAULT_ATOL,
    opset: int = 17,
    seed: int = 0,
) -> OnnxExport:
    """Write `module` (one sample's `input_shape`, no batch dim) to ONNX and verify it.

    Raises ExportMismatchError if onnxruntime's outputs differ by more than `atol`; the file is
    left in place so the user can inspect it.
    """
    import torch

    module = module.eval().cpu()
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    traced = torch.randn((2, *input_shape), generator=gen)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (traced,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    diff = verify_onnx(module, path, torch.randn((3, *input_shape), generator=gen))
    if not diff <= atol:
        raise ExportMismatchError(
            f"ONNX export {path} differs from PyTorch by {diff:.3g} (max abs), over {atol:g}"
        )
    return OnnxExport(path, diff, opset)


def verify_onnx(module, onnx_path: str | Path, x) -> float:
    """Max abs difference between `module(x)` and onnxruntime on the CPU EP."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module.eval().cpu()(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def onnx_top1(onnx_path: str | Path, batches, prepare=None) -> float:
    """Top-1 accuracy of the ONNX graph in onnxruntime over `(x, y)` batches; `prepare(x)`
    resizes inputs as the model expects (a subnet's resolution). Checks the file users ship,
    not the PyTorch module it came from."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in batches:
        x = prepare(x) if prepare is not None else x
        logits = session.run(None, {name: x.contiguous().numpy()})[0]
        correct += int((np.argmax(logits, axis=1) == y.numpy()).sum())
        total += int(y.numel())
    return correct / max(total, 1)
