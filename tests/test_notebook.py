"""examples/pareto.ipynb runs top to bottom against a small search run made here."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "pareto.ipynb"


def _tiny_search_run(root: Path) -> Path:
    """An untrained tiny mbv3 searched for top1 x measured latency: 8 evaluations."""
    from nasbench.commands.search import SearchConfig, run_search

    cfg = SearchConfig.model_validate({
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "data": {"name": "digits", "resolution": 16, "channels": 1, "batch_size": 64},
        "objectives": ["top1", "latency_ms"],
        "optimizer": {"name": "random", "settings": {"batch_size": 4}},
        "budget": 8,
        "evaluation": {"device": "cpu", "bn_batches": 1, "val_batches": 1},
        "latency": {"backend": "torch", "batch": 1, "threads": 1, "warmup": 1, "repeats": 3},
        "run": {"root": str(root), "name": "nb-search", "seed": 0},
    })
    return run_search(cfg)


def test_notebook_outputs_are_stripped():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_pareto_notebook_executes_and_exports_onnx(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    import nasbench

    run_path = _tiny_search_run(tmp_path)
    monkeypatch.setenv("NASBENCH_RUN", str(run_path))
    monkeypatch.setenv("NASBENCH_PICK", "latency_ms <= 1000")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    exports = nasbench.load_run(run_path).manifest["exports"]
    (record,) = exports.values()
    assert (run_path / record["onnx"]).stat().st_size > 0
    assert record["max_abs_diff"] <= 1e-4
    text = "".join(o.get("text", "") for o in outputs)
    assert "onnxruntime output (1, 10)" in text
