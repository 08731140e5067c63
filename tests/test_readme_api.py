"""The README's Python session runs as written, from a folder that is not the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_session() -> str:
    """The first ```python block under '## Python API'."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_session_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NASBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scope: dict = {}
    exec(compile(readme_session(), "README.md", "exec"), scope)
    found, pruned, best = scope["found"], scope["pruned"], scope["best"]
    assert len(found.evaluations) == 32 and found.path.parent == tmp_path / "results"
    assert best.metrics["latency_ms_pred"] <= 50 and best.onnx.exists()
    stages = list(pruned.metrics["stage"])
    assert stages == ["dense", "pruned", "finetuned"]
    assert pruned.manifest["summary"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert scope["ax"].get_xlabel() and not list(tmp_path.glob("*.png"))
