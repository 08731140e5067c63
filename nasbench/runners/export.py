"""The export runner: a searched subnet to safetensors and ONNX, verified with onnxruntime.

The subnet is extracted from the search run's supernet with BN recalibrated for that arch, saved
as `subnets/<arch_id>.safetensors` and `subnets/<arch_id>.onnx` (dynamic batch), checked against
onnxruntime (max abs diff <= 1e-4 or it fails) and recorded in the run manifest under `exports`.
The prune runner starts from such an export (`model: {source: export}`) through
`load_exported_subnet`, so it prunes exactly the module that was verified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbench.runs import Run
from nasbench_core.errors import UserError

RunLike = Run | str | os.PathLike


@dataclass(frozen=True)
class ExportResult:
    """One exported subnet: where its files are and what the search measured for it."""

    arch_id: str
    arch: dict[str, Any]
    metrics: dict[str, float]
    onnx: Path
    safetensors: Path
    input_shape: tuple[int, ...]
    max_abs_diff: float
    opset: int
    trained: bool
    picked_by: list[str] | None


def choose_row(df, metadata: dict, *, arch_id: str | None, pick: Sequence[str],
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


def _search_run(run: RunLike) -> Run:
    from nasbench.runs import load_run

    opened = run if isinstance(run, Run) else load_run(run)
    if opened.manifest.get("command") != "search":
        raise UserError(f"{opened.path} is a `{opened.manifest.get('command')}` run, not a search run")
    return opened


def export(run: RunLike, *, arch_id: str | None = None, pick: str | Sequence[str] = (),
           objective: str | None = None) -> ExportResult:
    """Export one evaluated arch of a search run: by `arch_id`, or the best `objective` (default
    top1) among the archs meeting every `pick` constraint (e.g. "latency_ms <= 5")."""
    from safetensors.torch import save_model

    import supernets
    from nasbench.onnx_export import export_onnx
    from nasbench.progress import echo
    from nasbench.runners.config import stored_config
    from nasbench.runners.search import SearchConfig, load_supernet
    from nasbench_core.atomic import atomic_path
    from search.evaluations import read_table

    picks = [pick] if isinstance(pick, str) else list(pick)
    opened = _search_run(run)
    df, metadata = read_table(opened.path / "evaluations.parquet")
    row = choose_row(df, metadata, arch_id=arch_id, pick=picks, objective=objective)
    cfg = stored_config(opened, SearchConfig)
    net, data, info = load_supernet(cfg, "cpu")
    arch = net.space.parse(row["arch"])
    aid = net.space.arch_id(arch)
    net.set_active(arch)
    supernets.recalibrate_bn(net, data.train_loader, cfg.evaluation.bn_batches)
    subnet = net.extract(arch).eval()
    res = arch.get("resolution", data.resolution)
    out = opened.path / "subnets"
    with atomic_path(out / f"{aid}.safetensors") as tmp:
        save_model(subnet, str(tmp))
    checked = export_onnx(subnet, (data.in_chans, res, res), out / f"{aid}.onnx")
    echo(f"onnxruntime max abs diff: {checked.max_abs_diff:.3g}")
    metrics = {k: float(row[k]) for k in metadata.get("directions", {}) if k in row.index}
    record = {
        "arch": arch, "metrics": metrics, "trained": info["trained"],
        "onnx": f"subnets/{aid}.onnx", "safetensors": f"subnets/{aid}.safetensors",
        "input_shape": [1, data.in_chans, res, res], "max_abs_diff": checked.max_abs_diff,
        "opset": checked.opset, "picked_by": picks or None,
    }
    opened.write_json(f"subnets/{aid}.json", record)
    opened.update_manifest(exports={**opened.manifest.get("exports", {}), aid: record})
    echo(f"exported {aid} -> {opened.path / record['onnx']}")
    return _result(opened, aid, record)


def _result(run: Run, aid: str, record: dict[str, Any]) -> ExportResult:
    return ExportResult(
        arch_id=aid, arch=dict(record["arch"]), metrics=dict(record["metrics"]),
        onnx=run.path / record["onnx"], safetensors=run.path / record["safetensors"],
        input_shape=tuple(record["input_shape"]), max_abs_diff=float(record["max_abs_diff"]),
        opset=int(record["opset"]), trained=bool(record["trained"]), picked_by=record["picked_by"],
    )


def exported(run: RunLike, arch_id: str) -> ExportResult:
    """An earlier export of `arch_id` from a search run, as recorded in its manifest."""
    opened = _search_run(run)
    exports = opened.manifest.get("exports", {})
    if arch_id not in exports:
        raise UserError(f"{opened.path} has no export of arch {arch_id!r} (exported: "
                        f"{', '.join(exports) or 'none'}); run `nasbench export {opened.path} "
                        f"--arch-id {arch_id}` first")
    return _result(opened, arch_id, exports[arch_id])


def load_exported_subnet(run: RunLike, arch_id: str):
    """The module `export` wrote: the search run's supernet extracted at the arch, then loaded
    with the exported (BN-recalibrated) weights."""
    from safetensors.torch import load_model

    from nasbench.runners.config import stored_config
    from nasbench.runners.search import SearchConfig, load_supernet

    opened = _search_run(run)
    record = exported(opened, arch_id)
    net, _, _ = load_supernet(stored_config(opened, SearchConfig), "cpu")
    subnet = net.extract(net.space.validate(record.arch)).eval()
    load_model(subnet, str(record.safetensors))
    return subnet
