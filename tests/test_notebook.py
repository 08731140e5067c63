"""examples/pareto.ipynb runs top to bottom on the public API, from any working folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "examples" / "pareto.ipynb"


def _tiny_search_run(root: Path):
    """An untrained tiny mbv3 searched for top1 x measured latency: 8 evaluations."""
    import nasbench

    return nasbench.search({
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "data": {"name": "digits", "resolution": 16, "channels": 1, "batch_size": 64},
        "objectives": ["top1", "latency_ms"],
        "optimizer": {"name": "random", "settings": {"batch_size": 4}},
        "budget": 8,
        "evaluation": {"device": "cpu", "bn_batches": 1, "val_batches": 1},
        "latency": {"backend": "torch", "batch": 1, "threads": 1, "warmup": 1, "repeats": 3},
        "run": {"root": str(root), "name": "nb-search", "seed": 0},
    }, quiet=True)


def _execute(cwd: Path) -> list:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    return outputs


def _untracked() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored", "examples"],
                          cwd=ROOT, capture_output=True, text=True).stdout


def test_notebook_outputs_are_stripped_and_use_only_the_public_api():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert "nasbench.commands" not in source and "nasbench.runners" not in source
    assert "read_table" not in source and ".manifest[\"config\"]" not in source


@pytest.mark.slow
def test_notebook_on_a_given_run_exports_onnx(tmp_path, monkeypatch):
    import nasbench

    run = _tiny_search_run(tmp_path)
    monkeypatch.setenv("NASBENCH_RUN", str(run.path))
    monkeypatch.setenv("NASBENCH_PICK", "latency_ms <= 1000")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outputs = _execute(NOTEBOOK.parent)

    assert any("image/png" in o.get("data", {}) for o in outputs)
    (record,) = nasbench.load_run(run.path).manifest["exports"].values()
    assert (run.path / record["onnx"]).stat().st_size > 0 and record["max_abs_diff"] <= 1e-4
    assert "onnxruntime output (1, 10)" in "".join(o.get("text", "") for o in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["examples", "elsewhere"])
def test_notebook_without_a_run_searches_into_a_temp_folder(where, tmp_path, monkeypatch):
    monkeypatch.delenv("NASBENCH_RUN", raising=False)
    monkeypatch.delenv("NASBENCH_PICK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = _untracked()
    outputs = _execute(NOTEBOOK.parent if where == "examples" else tmp_path)
    assert "onnxruntime output (1, 10)" in "".join(o.get("text", "") for o in outputs)
    assert _untracked() == before  # nothing written into the repository
    assert not list(tmp_path.iterdir())  # nor into the working folder
