"""CLI behaviour users rely on: every subcommand listed, user errors as one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_process

SUBCOMMANDS = ["train", "prune", "search", "export", "submit", "jobs", "cluster", "results", "bench",
               "quickstart", "latency"]


def assert_one_line_error(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help_lists_every_subcommand(cli):
    result = cli("--help")
    assert result.code == 0
    for name in SUBCOMMANDS:
        assert name in result.out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(cli, name):
    result = cli(name, "--help")
    assert result.code == 0, result.err
    assert "Usage" in result.out


def test_malformed_yaml(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlr: 0.1\n")
    assert_one_line_error(cli("quickstart", str(bad)), str(bad), "malformed YAML", "line")


def test_unknown_key(cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  name: digits\n  batchsize: 3\n")
    assert_one_line_error(cli("quickstart", str(cfg)), str(cfg), "unknown key 'data.batchsize'", "batch_size")


def test_wrong_type(cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: many\n")
    assert_one_line_error(cli("quickstart", str(cfg)), str(cfg), "'epochs'", "integer", "'many'")


def test_missing_config_file(cli, tmp_path):
    assert_one_line_error(cli("quickstart", str(tmp_path / "nope.yaml")), "config file not found")


def test_missing_dataset_root(cli, tmp_path):
    result = cli("quickstart", "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}",
                 "--set", f"run.root={tmp_path / 'results'}")
    assert_one_line_error(result, "cifar10", str(tmp_path), "data.download=true")


def test_unset_dataset_root(cli, tmp_path):
    result = cli("quickstart", "--set", "data.name=mnist", "--set", f"run.root={tmp_path}")
    assert_one_line_error(result, "data.root")


def test_missing_run(cli, tmp_path):
    assert_one_line_error(cli("results", str(tmp_path / "no-such-run")), "run not found", "no-such-run")


@pytest.mark.parametrize("override, needle", [
    ("epochs", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("a..b=1", "expected KEY=VALUE"),
    ("epochs=[1,", "not a valid YAML"),
    ("run.name=a run.name.x=1", "'run.name' is not a section"),
    ("nosuch=1", "unknown key 'nosuch'"),
])
def test_bad_set(cli, override, needle):
    args = [part for item in override.split(" ") for part in ("--set", item)]
    assert_one_line_error(cli("quickstart", *args), needle)


def test_set_values_are_typed(tmp_path):
    from nasbench.runners.config import resolve
    from nasbench.runners.quickstart import QuickstartConfig

    cfg = resolve(QuickstartConfig, None,
                  cli_overrides=["epochs=3", "prune_sparsity=0.25", "data.augment=true", "run.name=x"])
    assert (cfg.epochs, cfg.prune_sparsity, cfg.data.augment, cfg.run.name) == (3, 0.25, True, "x")


def test_unknown_option_is_one_line(cli):
    assert_one_line_error(cli("results", "--bogus"), "No such option: --bogus")
    assert_one_line_error(cli("no-such-command"), "No such command")


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.out.startswith("nasbench ")


def test_unknown_benchmark(cli):
    assert_one_line_error(cli("bench", "no-such-bench"), "unknown benchmark 'no-such-bench'")


def test_real_entry_point_exit_status(nasbench_exe, tmp_path):
    """The installed console script maps user errors to exit 2 with no traceback."""
    proc = run_process([*nasbench_exe, "results", "missing-run", "--root", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "run not found" in proc.stderr


def test_unexpected_errors_keep_traceback(nasbench_exe, tmp_path):
    """A bug is not a user error: traceback kept, exit 1."""
    code = ("import sys; from nasbench import cli; import nasbench.commands.results as r\n"
            "def boom(*a, **k):\n    raise RuntimeError('bug')\n"
            "r.list_runs = boom\nsys.argv=['nasbench','results']\ncli.main()")
    proc = run_process([str(Path(nasbench_exe[0]).with_name("python")), "-c", code], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: bug" in proc.stderr
