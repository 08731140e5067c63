"""Facts about the device a latency was measured on; its `key` tags latency tables.

Latency depends on the hardware, the runtime, the batch size and the thread count, so a
predictor fitted for one key must not be used for another.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


@dataclass(frozen=True)
class DeviceInfo:
    """Where and how latencies were measured. `key` is the table's `device` column."""

    hardware: str
    device: str
    backend: str
    batch: int
    threads: int
    cores: int
    torch_version: str
    onnxruntime_version: str | None
    platform: str

    @property
    def key(self) -> str:
        return f"{self.hardware}|{self.backend}|batch={self.batch}|threads={self.threads}"

    def to_dict(self) -> dict:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: dict) -> DeviceInfo:
        return cls(**{k: v for k, v in data.items() if k != "key"})

    @classmethod
    def current(cls, device: str, backend: str, batch: int, threads: int) -> DeviceInfo:
        """Facts of this machine for a resolved device (`cpu`, `cuda`, `cuda:N`) and backend.
        The hardware key names the GPU model, not its index: two identical GPUs share it."""
        import torch

        from search.latency.measure import cuda_index

        index = cuda_index(device)
        name = cpu_model_name() if index is None else torch.cuda.get_device_name(index)
        hardware = f"{'cpu' if index is None else 'cuda'}:{name}"
        return cls(
            hardware=hardware,
            device=device,
            backend=backend,
            batch=batch,
            threads=threads,
            cores=os.cpu_count() or 1,
            torch_version=torch.__version__,
            onnxruntime_version=onnxruntime_version(),
            platform=platform.platform(),
        )
