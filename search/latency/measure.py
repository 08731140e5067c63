"""Wall-clock latency of one model on this machine, with torch (eager or compiled) or ONNX Runtime.

Each measurement runs `warmup` untimed forwards, then `repeats` timed ones, and reports the
median and inter-quartile range in milliseconds: the median resists the stragglers a shared
CPU produces, the IQR says how much to trust it. Thread settings are restored afterwards.
On a CPU shared with other jobs, `clock="cpu"` times the calling thread's CPU time instead of
wall time (single-threaded runs only): it ignores the time the OS gave to other processes.
On GPU every timed call is synchronised (CUDA events for torch, IOBinding for ONNX Runtime),
so the time covers the kernels, not just their launch.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from nasbench_core.errors import ConfigError
from search.latency.device import DeviceInfo

BACKENDS = ("torch", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"^cuda(?::(\d+))?$")


def cuda_index(device: str) -> int | None:
    """N of `cuda:N` (0 for plain `cuda`); None for any other device."""
    match = _CUDA_INDEX.match(device)
    return None if match is None else int(match.group(1) or 0)
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class LatencySettings:
    """How to time a model. `threads=None` and `device="auto"` are resolved by `resolve()`."""

    backend: str = "torch"
    device: str = "auto"
    batch: int = 1
    threads: int | None = None
    warmup: int = 10
    repeats: int = 50
    compile: bool = False
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"latency backend {self.backend!r} is unknown; expected one of {BACKENDS}")
        if self.device not in ("auto", "cpu") and cuda_index(self.device) is None:
            raise ConfigError(f"latency device {self.device!r} is unknown; expected one of {DEVICES}")
        for name in ("batch", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"latency {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"latency warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"latency threads must be >= 1, got {self.threads}")
        if self.clock not in CLOCKS:
            raise ConfigError(f"latency clock {self.clock!r} is unknown; expected one of {CLOCKS}")
        if self.clock == "cpu" and (self.threads != 1 or self.is_cuda):
            raise ConfigError("latency clock 'cpu' needs threads=1 on a CPU device")
        if self.compile and self.backend != "torch":
            raise ConfigError("latency compile=true needs backend 'torch'")

    @property
    def is_cuda(self) -> bool:
        return cuda_index(self.device) is not None

    def resolve(self) -> LatencySettings:
        """Concrete device and thread count, chosen by what this machine has."""
        device = self.device
        if device == "auto":
            device = "cuda" if _cuda_available(self.backend) else "cpu"
        index = cuda_index(device)
        if index is not None:
            if not _cuda_available(self.backend):
                raise ConfigError(f"latency device {device!r} requested but {self.backend} sees no "
                                  "CUDA device")
            if index >= torch.cuda.device_count():
                raise ConfigError(f"latency device {device!r}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA devices (cuda:0..)")
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        return replace(self, device=device, threads=threads)

    @property
    def backend_label(self) -> str:
        if self.backend == "torch":
            label = "torch-compile" if self.compile else "torch-eager"
            return label if self.clock == "wall" else f"{label}-cputime"
        label = f"onnxruntime-{'cuda' if self.is_cuda else 'cpu'}"
        return label if self.clock == "wall" else f"{label}-cputime"

    def device_info(self) -> DeviceInfo:
        s = self.resolve()
        return DeviceInfo.current(s.device, s.backend_label, s.batch, int(s.threads or 1))


def _cuda_available(backend: str) -> bool:
    if backend == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    return torch.cuda.is_available()


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...] = field(repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyResult:
        arr = np.asarray(samples_ms, dtype=np.float64)
        q1, med, q3 = np.percentile(arr, [25, 50, 75])
        return cls(float(med), float(q3 - q1), tuple(float(v) for v in arr))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then put the old value back."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


Runner = Callable[[], float]


def measure_latency(
    model: nn.Module, input_shape: Sequence[int], settings: LatencySettings | None = None
) -> LatencyResult:
    """Time `model` on a random batch of `settings.batch` samples of `input_shape` (no batch dim).

    The torch backend moves `model` to the resolved device; ONNX Runtime exports a CPU copy.
    """
    s = (settings or LatencySettings()).resolve()
    was_training = model.training
    try:
        with torch_threads(s.threads):
            runner = prepare_runner(model, input_shape, s)
            return LatencyResult.from_samples(time_runner(runner, s.warmup, s.repeats))
    finally:
        model.train(was_training)


def time_runner(runner: Runner, warmup: int, repeats: int) -> list[float]:
    """`warmup` untimed calls, then `repeats` timed ones (ms)."""
    for _ in range(warmup):
        runner()
    return [runner() for _ in range(repeats)]


def prepare_runner(model: nn.Module, input_shape: Sequence[int], s: LatencySettings) -> Runner:
    """A callable that runs one synchronised forward and returns its time in ms.

    Call it inside `torch_threads(s.threads)` with resolved settings.
    """
    x = torch.randn((s.batch, *input_shape), generator=torch.Generator().manual_seed(0))
    model.eval()
    if s.backend == "torch":
        return _torch_runner(model, x, s)
    return _onnxruntime_runner(model, x, s)


def _clock(s: LatencySettings) -> Callable[[], float]:
    # One thread runs all the work in the caller (torch and ORT alike), so its CPU time is it.
    return time.thread_time if s.clock == "cpu" else time.perf_counter


def _torch_runner(model: nn.Module, x: torch.Tensor, s: LatencySettings) -> Runner:
    device = torch.device(s.device)
    model = model.to(device)
    x = x.to(device)
    run = torch.compile(model) if s.compile else model
    clock = _clock(s)

    if device.type == "cuda":
        def call() -> float:
            # CUDA events time the kernels themselves; synchronising the end event waits for them.
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            with torch.inference_mode():
                torch.cuda.synchronize(device)
                start.record()
                run(x)
                end.record()
                end.synchronize()
            return float(start.elapsed_time(end))
    else:
        def call() -> float:
            with torch.inference_mode():
                t0 = clock()
                run(x)
                return (clock() - t0) * 1e3

    return call


def onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    """The model as an in-memory ONNX graph at the static shape of `x` (timing only)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.cpu(), (x.cpu(),), buffer, dynamo=False,
            input_names=["input"], output_names=["output"],
        )
    return buffer.getvalue()


def _onnxruntime_runner(model: nn.Module, x: torch.Tensor, s: LatencySettings) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(s.threads or 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    graph = onnx_bytes(model, x)
    index = cuda_index(s.device)
    providers: list = (["CPUExecutionProvider"] if index is None
                       else [("CUDAExecutionProvider", {"device_id": index})])
    session = ort.InferenceSession(graph, sess_options=options, providers=providers)
    feed = x.cpu().numpy()
    clock = _clock(s)
    if index is not None:
        # IOBinding keeps input and output on the GPU; synchronize_outputs waits for the kernels.
        binding = session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(feed, "cuda", index))
        binding.bind_output("output", "cuda", index)

        def call() -> float:
            t0 = clock()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return (clock() - t0) * 1e3
    else:
        def call() -> float:
            t0 = clock()
            session.run(None, {"input": feed})
            return (clock() - t0) * 1e3

    return call
