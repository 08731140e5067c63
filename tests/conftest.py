"""Shared fixtures: run the CLI in-process and capture its exit status and streams."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# One intra-op thread: tiny models gain nothing from more, and on a shared 2-core machine
# extra threads make every test many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Call `nasbench.cli.main` in-process; returns exit code, stdout and stderr."""
    from nasbench.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def nasbench_exe() -> list[str]:
    """The real console script, for tests that need a separate process."""
    exe = Path(sys.executable).with_name("nasbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nasbench.cli"]


def run_process(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
