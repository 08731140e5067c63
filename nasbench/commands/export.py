"""`nasbench export RUN --arch-id ID | --pick "latency_ms<=5" [--from front|all]`: the export
runner from the shell."""

from __future__ import annotations

from pathlib import Path

import typer

from nasbench.commands.common import QUIET_OPTION

RUN_ARGUMENT = typer.Argument(..., help="A `nasbench search` run directory (or its name).")
ARCH_ID_OPTION = typer.Option(None, "--arch-id", help="Export this evaluated arch.")
PICK_OPTION = typer.Option(
    [], "--pick", metavar="CONSTRAINT",
    help='Export the best arch on the run\'s Pareto front meeting a constraint, e.g. '
         '--pick "latency_ms<=5" (repeatable).',
)
FROM_OPTION = typer.Option(
    None, "--from", metavar="front|all",
    help="Where --pick chooses: the run's Pareto front of feasible archs (default: front), or "
         "all evaluations.",
)
OBJECTIVE_OPTION = typer.Option(
    None, "--objective", help="What --pick maximises/minimises (default: top1).",
)


def command(
    run: Path = RUN_ARGUMENT,
    arch_id: str | None = ARCH_ID_OPTION,
    pick: list[str] = PICK_OPTION,
    objective: str | None = OBJECTIVE_OPTION,
    pick_from: str | None = FROM_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Extract a subnet (BN recalibrated), write safetensors + ONNX, verify with onnxruntime."""
    from nasbench.progress import set_quiet
    from nasbench.runners.export import export

    set_quiet(quiet)
    export(run, arch_id=arch_id, pick=pick, objective=objective, pick_from=pick_from)
