"""Wall-clock latency of one model on this machine, with torch (eager or compiled) or ONNX Runtime.

Each measurement runs `warmup` untimed forwards, then `repeats` timed ones, and reports the
median and inter-quartile range in milliseconds: the median resists the stragglers a shared
CPU produces, the IQR says how much to trust it. Thread settings are restored afterwards.
On a CPU shared with other jobs, `clock="cpu"` times the calling thread's CPU time instead of
wall time (single-threaded runs only): it ignores the time the OS gave to other processes.
On GPU every timed call is synchronised (CUDA events for torch, IOBinding for ONNX Runtime),
so the time covers the kernels, not just their launch.

Robust timing (`time_robust`, used by every measurement here): the repeats are split into
`rounds` visits and, when several models are timed together, the visits are interleaved in a
shuffled order, so a burst of load from another process hits all models alike instead of
skewing the ones timed during it. A model whose IQR/median is above `max_rel_iqr` is re-timed
(at most `max_retimes` times, the quietest attempt kept) and stays flagged `noisy` if it never
gets under the threshold. Each round's order is seeded by (seed, attempt, round) alone, and the
visits a killed measurement journaled can be handed back (`done`), so a resume times only the
rest, in the order the uninterrupted measurement would have (`search.latency.journal`).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    rounds: int = 5
    """Visits per model, `repeats` split across them (interleaved when timing several models)."""
    max_rel_iqr: float = 0.1
    """IQR/median above this flags a measurement as noisy and re-times it."""
    max_retimes: int = 2
    """How many times a noisy measurement is re-timed (0: flag only)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"latency backend {self.backend!r} is unknown; expected one of {BACKENDS}")
        if self.device not in ("auto", "cpu") and cuda_index(self.device) is None:
            raise ConfigError(f"latency device {self.device!r} is unknown; expected one of {DEVICES}")
        for name in ("batch", "repeats", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"latency {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"latency warmup must be >= 0, got {self.warmup}")
        if self.max_retimes < 0:
            raise ConfigError(f"latency max_retimes must be >= 0, got {self.max_retimes}")
        if not self.max_rel_iqr > 0:
            raise ConfigError(f"latency max_rel_iqr must be > 0, got {self.max_rel_iqr}")
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
    """Median and IQR (ms) of one model's samples; `retimed` counts the re-timings it needed,
    `noisy` says its IQR/median stayed above the threshold after them."""

    median_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...] = field(repr=False)
    retimed: int = 0
    noisy: bool = False

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyResult:
        arr = np.asarray(samples_ms, dtype=np.float64)
        q1, med, q3 = np.percentile(arr, [25, 50, 75])
        return cls(float(med), float(q3 - q1), tuple(float(v) for v in arr))

    @property
    def rel_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")


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
"""One synchronised call of the model; returns its time in ms."""


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
            return time_robust([runner], s)[0]
    finally:
        model.train(was_training)


def time_runner(runner: Runner, warmup: int, repeats: int) -> list[float]:
    """`warmup` untimed calls, then `repeats` timed ones (ms)."""
    for _ in range(warmup):
        runner()
    return [runner() for _ in range(repeats)]


Progress = Callable[[int, int], None]


def visits_per_model(s: LatencySettings) -> int:
    """Rounds actually run: never more than there are timed calls to share out."""
    return min(s.rounds, s.repeats)


VisitKey = tuple[int, int, int]
"""(attempt, round, runner index) of one visit: attempt 0 is the first measurement, k the k-th
re-timing."""


@dataclass(frozen=True)
class Visit:
    """One visit of one runner and the samples (ms) it gave; `replayed` when they came from a
    previous process's journal (`done`) instead of the clock."""

    attempt: int
    round: int
    index: int
    samples_ms: tuple[float, ...]
    replayed: bool = False

    @property
    def key(self) -> VisitKey:
        return (self.attempt, self.round, self.index)


def round_order(n: int, seed: int, attempt: int, round_: int) -> list[int]:
    """Positions 0..n-1 in the order one round visits them: in order for the first round of the
    first attempt, else shuffled by a generator seeded with (seed, attempt, round) alone. No round
    depends on what was timed before it, so a resumed measurement visits its remaining rounds in
    the order the uninterrupted one would have."""
    if attempt == 0 and round_ == 0:
        return list(range(n))
    return [int(i) for i in np.random.default_rng([seed, attempt, round_]).permutation(n)]


def time_interleaved(
    runners: Sequence[Runner],
    s: LatencySettings,
    *,
    seed: int = 0,
    attempt: int = 0,
    indices: Sequence[int] | None = None,
    before_visit: Callable[[int], None] | None = None,
    warm: set[int] | None = None,
    done: Mapping[VisitKey, Sequence[float]] | None = None,
    on_visit: Callable[[Visit], None] | None = None,
) -> list[list[float]]:
    """Samples (ms) of each runner: `min(rounds, repeats)` visits of `ceil(repeats / rounds)`
    timed calls, each round in `round_order`.

    `indices` name the runners (default 0..n-1) in visit keys, `warm` and `before_visit(i)`
    (which prepares runner `i`, e.g. activates its arch). A runner's first visit in this
    process (not in `warm`, which is updated) gets the full warmup, later ones at most 2 calls.
    A visit whose key is in `done` takes those samples instead of timing (a resume);
    `on_visit` sees every visit as it finishes.
    """
    ids = list(range(len(runners))) if indices is None else [int(i) for i in indices]
    warm = set() if warm is None else warm
    rounds = visits_per_model(s)
    per_visit = -(-s.repeats // rounds)
    samples: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        for pos in round_order(len(runners), seed, attempt, r):
            index = ids[pos]
            replayed = done is not None and (attempt, r, index) in done
            if replayed:
                times = [float(t) for t in done[(attempt, r, index)]]
            else:
                if before_visit is not None:
                    before_visit(index)
                warmup = s.warmup if index not in warm else min(s.warmup, 2)
                times = time_runner(runners[pos], warmup, per_visit)
                warm.add(index)
            samples[pos] += times
            if on_visit is not None:
                on_visit(Visit(attempt, r, index, tuple(times), replayed))
    return samples


def time_robust(
    runners: Sequence[Runner],
    s: LatencySettings,
    *,
    seed: int = 0,
    before_visit: Callable[[int], None] | None = None,
    on_progress: Progress | None = None,
    done: Mapping[VisitKey, Sequence[float]] | None = None,
    on_visit: Callable[[Visit], None] | None = None,
) -> list[LatencyResult]:
    """Median and IQR of each runner, timed in interleaved rounds; noisy ones re-timed.

    A result with IQR/median > `s.max_rel_iqr` is timed again (all such results together,
    interleaved), up to `s.max_retimes` times; the attempt with the smallest IQR/median is kept,
    so a burst of load during one attempt does not stick. `on_progress(done, total)` counts
    visits; `total` grows when re-timings are needed.

    Resumable: `done` holds visits a killed process finished (by `Visit.key`); they are not
    timed again, and since the rounds' orders are seeded one by one and the noisy set follows
    from the samples, the rest is visited as the uninterrupted measurement would have.
    `on_visit` sees each visit timed now (not the replayed ones), e.g. to journal it.
    """
    total, count = len(runners) * visits_per_model(s), 0
    warm: set[int] = set()

    def visited(visit: Visit) -> None:
        nonlocal count
        count += 1
        if on_progress is not None:
            on_progress(count, total)
        if on_visit is not None and not visit.replayed:
            on_visit(visit)

    common = {"seed": seed, "before_visit": before_visit, "warm": warm, "done": done,
              "on_visit": visited}
    results = [LatencyResult.from_samples(t) for t in time_interleaved(runners, s, **common)]
    for attempt in range(1, s.max_retimes + 1):
        noisy = [i for i, r in enumerate(results) if r.rel_iqr > s.max_rel_iqr]
        if not noisy:
            break
        total += len(noisy) * visits_per_model(s)
        again = time_interleaved([runners[i] for i in noisy], s, attempt=attempt, indices=noisy,
                                 **common)
        for i, times in zip(noisy, again, strict=True):
            retry = LatencyResult.from_samples(times)
            results[i] = replace(min(results[i], retry, key=lambda r: r.rel_iqr), retimed=attempt)
    return [replace(r, noisy=r.rel_iqr > s.max_rel_iqr) for r in results]


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
