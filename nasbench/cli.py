"""The `nasbench` command line: one typer app, one module per subcommand.

User mistakes (`UserError`) print one line to stderr and exit 2; bugs keep their traceback.
SIGTERM (also how `jobs stop` ends a Ray job) prints one line and exits 143, as a shell would.
"""

from __future__ import annotations

import sys

import click
import typer

from nasbench.commands import (
    bench,
    cluster,
    export,
    jobs,
    latency,
    prune,
    quickstart,
    results,
    search,
    submit,
    train,
)
from nasbench.termination import EXIT_CODE, Terminated, sigterm_raises
from nasbench_core.errors import UserError


def _click_errors() -> tuple[type[Exception], ...]:
    """click's usage errors, and those of the click copy that newer typer releases vendor."""
    try:
        from typer._click.exceptions import ClickException as Vendored
    except ImportError:
        return (click.ClickException,)
    return (click.ClickException, Vendored)


CLICK_ERRORS = _click_errors()
CLICK_ABORTS = (click.exceptions.Abort, typer.Abort)
CLICK_EXITS = (click.exceptions.Exit, typer.Exit)

app = typer.Typer(
    name="nasbench",
    help="Workbench for neural architecture search and pruning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _version(value: bool) -> None:
    if value:
        from nasbench import __version__

        print(f"nasbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Workbench for neural architecture search and pruning."""


app.command("train", help="Train a weight-sharing supernet (BigNAS sandwich rule).")(train.command)
app.command("prune", help="Prune a model: global magnitude, lottery tickets, layer-adaptive DP.")(prune.command)
app.command("search", help="Multi-objective hardware-aware search over a trained supernet.")(search.command)
app.command("export", help="Export a chosen subnet of a search run to ONNX, verified.")(export.command)
app.add_typer(latency.app, name="latency", help="Measure latency tables and fit latency predictors.")
app.command(
    "submit",
    help="Submit a nasbench command to a Ray cluster: nasbench submit -- train cfg.yaml",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(submit.command)
app.add_typer(jobs.app, name="jobs", help="List, inspect, follow and stop Ray jobs.")
app.add_typer(cluster.app, name="cluster", help="Start, stop and inspect a local Ray cluster.")
app.command("results", help="List runs, or show one run's manifest and tables.")(results.command)
app.command("bench", help="Run a registered benchmark; writes results/bench/NAME.json.")(bench.command)
app.command("quickstart", help="The whole pipeline on digits, on CPU, in minutes.")(quickstart.command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps user errors to one line + exit 2."""
    try:
        with sigterm_raises():
            code = app(args=argv, standalone_mode=False)
    except Terminated:
        print("nasbench: terminated by SIGTERM", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except UserError as exc:
        print(f"nasbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except CLICK_ABORTS:
        print("nasbench: aborted", file=sys.stderr)
        sys.exit(130)
    except CLICK_ERRORS as exc:
        lines = (exc.format_message() or "").strip().splitlines()
        if lines:  # an empty message means the help text was shown instead (no arguments)
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "nasbench"
            print(f"{command}: error: {lines[0]}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except CLICK_EXITS as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
