"""Facts about the device a latency was measured on; its `key` tags latency tables.

Latency depends on the hardware, the runtime, the batch size and the thread count, so a
predictor fitted for one key must not be used for another.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
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


def cpu_freq_mhz() -> tuple[float | None, str | None]:
    """The current CPU clock (MHz) and where it was read: psutil, cpufreq sysfs, /proc/cpuinfo
    (mean over cores); (None, None) when the machine does not say."""
    with contextlib.suppress(ImportError, OSError, AttributeError, NotImplementedError):
        import psutil

        freq = psutil.cpu_freq()
        if freq is not None and freq.current > 0:
            return float(freq.current), "psutil"
    sysfs = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    with contextlib.suppress(OSError, ValueError):
        return int(sysfs.read_text().strip()) / 1000.0, "sysfs"  # kHz
    with contextlib.suppress(OSError, ValueError):
        mhz = [float(line.split(":", 1)[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.lower().startswith("cpu mhz") and ":" in line]
        if mhz:
            return sum(mhz) / len(mhz), "/proc/cpuinfo"
    return None, None


def machine_state() -> dict:
    """How busy and how fast this machine is right now: the 1/5/15-minute load averages and the
    CPU clock. Recorded with every latency table: a table timed under load (or a throttled
    clock) explains its noise and must not be compared blindly with one timed on a quiet box.
    Unknown values are None."""
    try:
        load: tuple[float, ...] | tuple[None, ...] = os.getloadavg()
    except (AttributeError, OSError):  # not on every platform
        load = (None, None, None)
    mhz, source = cpu_freq_mhz()
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg_1m": load[0], "loadavg_5m": load[1], "loadavg_15m": load[2],
        "cpu_count": os.cpu_count(), "cpu_freq_mhz": mhz, "cpu_freq_source": source,
    }
