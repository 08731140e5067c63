"""The quickstart writes a real run with a trained model better than chance."""

from __future__ import annotations

from nasbench.runs import load_run


def test_quickstart_writes_a_completed_run(cli, tmp_path):
    result = cli("quickstart", "--quiet", "--set", f"run.root={tmp_path}", "--set", "epochs=2")
    assert result.code == 0, result.err
    run = load_run(tmp_path / "quickstart")
    assert run.status == "completed"
    assert run.metrics["epoch"].tolist() == [1, 2]
    assert run.manifest["summary"]["val_top1"] > 50.0  # chance is 10%
    assert (run.path / "checkpoints" / "small_cnn.safetensors").exists()
