"""Build, cache and choose the compiled kernels (env NASBENCH_CUDA_EXT=auto|0|1).

The C++ (CPU) and CUDA extensions are JIT-built with `torch.utils.cpp_extension.load` on first
use into TORCH_EXTENSIONS_DIR (default ~/.cache/nasbench/torch_extensions), one directory per
torch version, so later imports only load the cached library. `auto` falls back to the PyTorch
path with one info line when a compiler or toolkit is missing; `1` turns that into a UserError;
`0` always uses the PyTorch path.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from cuda_ext._compiled import CompiledOps
from nasbench_core.errors import UserError

ENV = "NASBENCH_CUDA_EXT"
CSRC = Path(__file__).parent / "csrc"
CPU_SOURCES = ("ops_cpu.cpp", "mos_mix.cpp")
CUDA_SOURCES = ("ops_cuda.cpp", "ops_cuda.cu", "mos_mix.cpp")
_log = logging.getLogger("cuda_ext")
_reported: set[str] = set()


class BuildUnavailable(Exception):
    """A compiler, toolkit or build step is missing; message says which."""


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "0", "1"):
        raise UserError(f"{ENV}={value!r} is not valid; expected auto, 0 or 1")
    return value


def cache_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "nasbench" / "torch_extensions"


def build_dir(kind: str) -> Path:
    import torch

    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
    return cache_root() / f"nasbench_ext_{kind}" / re.sub(r"[^\w.]", "_", tag)


def find_cuda_home() -> Path:
    """CUDA_HOME, else the toolkit behind `nvcc` (which may be a wrapper script)."""
    if os.environ.get("CUDA_HOME"):
        return Path(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise BuildUnavailable("no nvcc on PATH and CUDA_HOME is not set")
    try:
        probe = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise BuildUnavailable(f"cannot run {nvcc}: {exc}") from exc
    here = re.search(r"^#\$ _HERE_=(.+)$", probe.stdout + probe.stderr, re.MULTILINE)
    bin_dir = Path(here.group(1).strip()) if here else Path(os.path.realpath(nvcc)).parent
    return bin_dir.parent


def extra_cuda_includes() -> list[str]:
    """Header dirs of the pip CUDA wheels (cuSPARSE etc. missing from a slim toolkit)."""
    import torch

    site = Path(torch.__file__).parent.parent
    return [str(p) for p in sorted(site.glob("nvidia/cu*/include")) if p.is_dir()]


def _compile(kind: str) -> ModuleType:
    """Compile one extension into its cache dir (a no-op when cached) and import it."""
    # Importing cpp_extension logs a warning with its own CUDA_HOME guess; ours replaces it.
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp
    finally:
        torch_log.setLevel(level)

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildUnavailable(f"no C++ compiler ({compiler}) on PATH")
    if not cpp.is_ninja_available():
        raise BuildUnavailable("ninja is not installed")
    cflags = ["-O3", "-std=c++20", "-fopenmp"]
    kwargs: dict = {"extra_cflags": cflags, "extra_ldflags": ["-fopenmp"]}
    sources = CPU_SOURCES
    if kind == "cuda":
        cuda_home = find_cuda_home()
        cpp.CUDA_HOME = str(cuda_home)  # torch guesses it from `which nvcc`, wrong for wrappers
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources = CUDA_SOURCES
        kwargs["extra_cuda_cflags"] = ["-O3", "-std=c++20"]
        kwargs["extra_include_paths"] = [str(cuda_home / "include"), *extra_cuda_includes()]
        kwargs["with_cuda"] = True
    out = build_dir(kind)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return cpp.load(
            name=f"nasbench_ext_{kind}",
            sources=[str(CSRC / s) for s in sources],
            build_directory=str(out),
            verbose=False,
            **kwargs,
        )
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise BuildUnavailable(f"{kind} build failed: {last}") from exc


_built: dict[str, CompiledOps | BuildUnavailable] = {}


def _module(kind: str) -> CompiledOps:
    """Build once per process; a failure is remembered so it is not retried on every call."""
    if kind not in _built:
        try:
            _built[kind] = CompiledOps(_compile(kind))
        except BuildUnavailable as exc:
            _built[kind] = exc
    result = _built[kind]
    if isinstance(result, BuildUnavailable):
        raise result
    return result


def extension(device_type: str) -> CompiledOps | None:
    """Compiled ops module for a device type, or None to use the PyTorch path."""
    choice = mode()
    if choice == "0" or device_type not in ("cpu", "cuda"):
        return None
    try:
        return _module(device_type)
    except BuildUnavailable as exc:
        if choice == "1":
            raise UserError(f"{ENV}=1 but the {device_type} extension is unavailable: {exc}") from exc
        if device_type not in _reported:
            _reported.add(device_type)
            _log.info("cuda_ext: %s; using the PyTorch path for %s tensors", exc, device_type)
        return None


def active_backend() -> str:
    import torch

    if torch.cuda.is_available() and extension("cuda") is not None:
        return "cuda"
    return "cpp" if extension("cpu") is not None else "torch"
