"""`nasbench export RUN --arch-id ID | --pick "latency_ms<=5"`: a searched subnet to ONNX.

The subnet is extracted from the run's supernet with BN recalibrated for that arch, saved as
`subnets/<arch_id>.safetensors` and `subnets/<arch_id>.onnx` (dynamic batch), checked against
onnxruntime (max abs diff <= 1e-4 or it fails) and recorded in the run manifest under `exports`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nasbench.commands.common import QUIET_OPTION
from nasbench_core.errors import UserError

RUN_ARGUMENT = typer.Argument(..., help="A `nasbench search` run directory (or its name).")
ARCH_ID_OPTION = typer.Option(None, "--arch-id", help="Export this evaluated arch.")
PICK_OPTION = typer.Option(
    [], "--pick", metavar="CONSTRAINT",
    help='Export the best arch meeting a constraint, e.g. --pick "latency_ms<=5" (repeatable).',
)
OBJECTIVE_OPTION = typer.Option(
    None, "--objective", help="What --pick maximises/minimises (default: top1).",
)


def command(
    run: Path = RUN_ARGUMENT,
    arch_id: str | None = ARCH_ID_OPTION,
    pick: list[str] = PICK_OPTION,
    objective: str | None = OBJECTIVE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Extract a subnet (BN recalibrated), write safetensors + ONNX, verify with onnxruntime."""
    from nasbench.progress import set_quiet

    set_quiet(quiet)
    export_subnet(run, arch_id=arch_id, pick=pick, objective=objective)


def choose_row(df, metadata: dict, *, arch_id: str | None, pick: list[str],
               objective: str | None):
    """The evaluations row to export, or a one-line UserError saying why there is none."""
    import numpy as np

    from search import feasible_mask, parse_constraint

    if (arch_id is None) == (not pick):
        raise UserError("give exactly one of --arch-id ID or --pick CONSTRAINT")
    if arch_id is not None:
        if objective is not None:
            raise UserError("--objective only applies to --pick")
        rows = df[df["arch_id"] == arch_id]
        if rows.empty:
            raise UserError(f"arch_id {arch_id!r} is not in this run's evaluations "
                            f"({len(df)} archs)")
        return rows.iloc[0]
    directions = metadata.get("directions", {})
    metrics = [c for c in directions if c in df.columns] or [
        c for c in df.columns if df[c].dtype.kind == "f" and c != "timestamp"]
    objective = objective or ("top1" if "top1" in metrics else None)
    if objective is None or objective not in metrics:
        raise UserError(f"unknown objective {objective!r} for --objective; this run has: "
                        f"{', '.join(metrics)}")
    constraints = [parse_constraint(p, metrics) for p in pick]
    ok = df[feasible_mask(df, constraints) & np.isfinite(df[objective].to_numpy(dtype=float))]
    if ok.empty:
        raise UserError(f"no evaluated arch meets {' and '.join(map(str, constraints))} "
                        f"({len(df)} evaluated)")
    best = ok[objective].idxmin() if directions.get(objective) == "min" else ok[objective].idxmax()
    return ok.loc[best]


def export_subnet(run_path: Path, *, arch_id: str | None = None, pick: list[str] = (),
                  objective: str | None = None) -> dict:
    from safetensors.torch import save_model

    import supernets
    from nasbench.commands.search import SearchConfig, load_search_supernet
    from nasbench.export import export_onnx
    from nasbench.progress import echo
    from nasbench.runs import load_run
    from nasbench_core.atomic import atomic_path
    from search.evaluations import read_table

    run = load_run(run_path)
    if run.manifest.get("command") != "search":
        raise UserError(f"{run.path} is a `{run.manifest.get('command')}` run, not a search run")
    df, metadata = read_table(run.path / "evaluations.parquet")
    row = choose_row(df, metadata, arch_id=arch_id, pick=list(pick), objective=objective)
    cfg = SearchConfig.model_validate(run.config)
    net, data, info = load_search_supernet(cfg, "cpu")
    arch = net.space.parse(row["arch"])
    aid = net.space.arch_id(arch)
    net.set_active(arch)
    supernets.recalibrate_bn(net, data.train_loader, cfg.evaluation.bn_batches)
    subnet = net.extract(arch).eval()
    res = arch.get("resolution", data.resolution)
    out = run.path / "subnets"
    with atomic_path(out / f"{aid}.safetensors") as tmp:
        save_model(subnet, str(tmp))
    result = export_onnx(subnet, (data.in_chans, res, res), out / f"{aid}.onnx")
    echo(f"onnxruntime max abs diff: {result.max_abs_diff:.3g}")
    metrics = {k: float(row[k]) for k in metadata.get("directions", {}) if k in row.index}
    record = {
        "arch": arch, "metrics": metrics, "trained": info["trained"],
        "onnx": f"subnets/{aid}.onnx", "safetensors": f"subnets/{aid}.safetensors",
        "input_shape": [1, data.in_chans, res, res], "max_abs_diff": result.max_abs_diff,
        "opset": result.opset, "picked_by": list(pick) or None,
    }
    run.write_json(f"subnets/{aid}.json", record)
    run.update_manifest(exports={**run.manifest.get("exports", {}), aid: record})
    echo(f"exported {aid} -> {run.path / record['onnx']}")
    return record


def export_record(run_path: Path, arch_id: str) -> dict:
    """The manifest record of an earlier `nasbench export` of `arch_id` from a search run."""
    from nasbench.runs import load_run

    run = load_run(run_path)
    if run.manifest.get("command") != "search":
        raise UserError(f"{run.path} is a `{run.manifest.get('command')}` run, not a search run")
    exports = run.manifest.get("exports", {})
    if arch_id not in exports:
        raise UserError(f"{run.path} has no export of arch {arch_id!r} (exported: "
                        f"{', '.join(exports) or 'none'}); run `nasbench export {run.path} "
                        f"--arch-id {arch_id}` first")
    return exports[arch_id]


def load_exported_subnet(run_path: Path, arch_id: str):
    """The module `nasbench export` wrote: the search run's supernet extracted at the arch,
    then loaded with the exported (BN-recalibrated) weights, so pruning starts from exactly
    the subnet that was verified against onnxruntime."""
    from safetensors.torch import load_model

    from nasbench.commands.search import SearchConfig, load_search_supernet
    from nasbench.runs import load_run

    record = export_record(run_path, arch_id)
    run = load_run(run_path)
    net, _, _ = load_search_supernet(SearchConfig.model_validate(run.config), "cpu")
    subnet = net.extract(net.space.validate(record["arch"])).eval()
    load_model(subnet, str(run.path / record["safetensors"]))
    return subnet

