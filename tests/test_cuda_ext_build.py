"""Selection, caching and building of the compiled extensions (env NASBENCH_CUDA_EXT)."""

from __future__ import annotations

import logging
import shutil
import stat

import pytest
import torch

import cuda_ext
from cuda_ext import _loader
from nasbench_core.errors import UserError


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget builds of this process so a test can change the environment they depend on."""
    monkeypatch.setattr(_loader, "_built", {})
    monkeypatch.setattr(_loader, "_reported", set())


def test_zero_forces_the_torch_path(monkeypatch, fresh_loader):
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "0")
    assert cuda_ext.backend() == "torch"
    assert _loader._built == {}  # nothing was built


def test_invalid_mode_is_a_user_error(monkeypatch):
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "yes")
    with pytest.raises(UserError, match="NASBENCH_CUDA_EXT='yes' is not valid"):
        cuda_ext.backend()


def test_auto_falls_back_with_one_info_line(monkeypatch, fresh_loader, caplog):
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "auto")
    monkeypatch.setenv("CXX", "no-such-compiler-nasbench")
    with caplog.at_level(logging.INFO, logger="cuda_ext"):
        assert cuda_ext.backend() == "torch"
        assert cuda_ext.kth_smallest_abs([torch.tensor([3.0, -1.0, 2.0])], 2) == 2.0
    lines = [r.getMessage() for r in caplog.records if r.name == "cuda_ext"]
    assert len(lines) == 1
    assert "no C++ compiler (no-such-compiler-nasbench)" in lines[0]
    assert "using the PyTorch path" in lines[0]


def test_one_fails_loudly_without_a_compiler(monkeypatch, fresh_loader):
    monkeypatch.setenv("NASBENCH_CUDA_EXT", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-nasbench")
    with pytest.raises(UserError, match="NASBENCH_CUDA_EXT=1 but the cpu extension is unavailable"):
        cuda_ext.kth_smallest_abs([torch.ones(3)], 1)


def test_cache_dir_respects_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _loader.build_dir("cpu").is_relative_to(tmp_path)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert _loader.cache_root().parts[-3:] == (".cache", "nasbench", "torch_extensions")


def test_cuda_home_is_found_behind_an_nvcc_wrapper(monkeypatch, tmp_path):
    wrapper = tmp_path / "nvcc"
    wrapper.write_text("#!/bin/sh\necho '#$ _HERE_=/opt/cuda-13.0/bin'\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert str(_loader.find_cuda_home()) == "/opt/cuda-13.0"
    monkeypatch.setenv("CUDA_HOME", "/elsewhere")
    assert str(_loader.find_cuda_home()) == "/elsewhere"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_sources_compile(monkeypatch, tmp_path):
    """Compile, link and import the CUDA extension (nothing runs: no GPU needed)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    module = _loader._compile("cuda")
    for name in ("kth_key", "count_below_and_ties", "masks_from_threshold", "apply_masks_",
                 "rewind_", "lamp_scores"):
        assert callable(getattr(module, name))
