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

from nasbench.runs import Run, RunLock
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
    picked_from: str | None = None
    exported_top1: float | None = None
    """Top-1 of the exported ONNX file in onnxruntime on the run's fixed subset: what the table
    says, because both recalibrate and score on the same samples (None without top1)."""


PICK_FROM = ("front", "all")
LATENCY_COLUMNS = ("latency_ms", "latency_ms_pred", "macs")


def _check_from(pick_from: str | None) -> None:
    if pick_from is not None and pick_from not in PICK_FROM:
        raise UserError(f"--from must be one of {', '.join(PICK_FROM)}, not {pick_from!r}")


def run_front(df, metadata: dict, constraints: Sequence[str] = (),
              objectives: Sequence[str] | None = None):
    """(feasible, front) boolean masks over `df`: the rows meeting the run's `constraints`, and
    the non-dominated ones among them over the run's objectives (`objective_directions` of the
    metadata, else `objectives`) -- the front `run.evaluations.is_pareto` shows."""
    from search import feasible_mask, parse_constraint
    from search.evaluations import objective_directions, with_pareto

    feasible = feasible_mask(df, [parse_constraint(c) for c in constraints])
    directions = objective_directions(metadata, objectives)
    if not directions:
        return feasible, feasible.copy()
    return feasible, with_pareto(df, directions, feasible)["is_pareto"].to_numpy()


def choose_row(df, metadata: dict, *, arch_id: str | None, pick: Sequence[str],
               objective: str | None, constraints: Sequence[str] = (),
               objectives: Sequence[str] | None = None, pick_from: str | None = None):
    """The evaluations row to export, or a one-line UserError saying why there is none.

    With `arch_id`, exactly that row (no front filter). With `pick` constraints, the candidates
    are, for `pick_from="front"` (the default), the run's Pareto front: rows meeting the run's
    own `constraints` and non-dominated among those over the run's objectives (directions from
    the metadata). The pick is a budget on that front, applied after the front is computed. For
    `pick_from="all"` every evaluation is a candidate. Among the candidates meeting every pick,
    the best `objective` (default top1; min or max as the metadata says) wins. Ties on the
    objective go to a row no other tied row dominates (over the run's objectives), then to the
    lower latency (`latency_ms`, else `latency_ms_pred`, else `macs`, whichever the table has),
    then to the smaller arch_id -- so the choice never depends on row order.
    """
    import numpy as np

    from search import feasible_mask, parse_constraint
    from search.evaluations import objective_directions

    _check_from(pick_from)
    if (arch_id is None) == (not pick):
        raise UserError("give exactly one of --arch-id ID or --pick CONSTRAINT")
    if arch_id is not None:
        if objective is not None:
            raise UserError("--objective only applies to --pick")
        if pick_from is not None:
            raise UserError("--from only applies to --pick")
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
    picks = [parse_constraint(p, metrics) for p in pick]
    wanted = " and ".join(map(str, picks))
    ok = feasible_mask(df, picks) & np.isfinite(df[objective].to_numpy(dtype=float))
    if (pick_from or "front") == "front":
        feasible, front = run_front(df, metadata, constraints, objectives)
        ok &= front
        if not ok.any():
            raise UserError(f"no arch on this run's Pareto front ({int(front.sum())} archs; "
                            f"{int(feasible.sum())} of {len(df)} feasible) meets {wanted}; "
                            f"--from all picks among all evaluations")
    elif not ok.any():
        raise UserError(f"no evaluated arch meets {wanted} ({len(df)} evaluated)")
    rows = df[ok]
    values = rows[objective].to_numpy(dtype=float)
    best = values.min() if directions.get(objective) == "min" else values.max()
    return _break_tie(rows[values == best], objective_directions(metadata, objectives))


def _break_tie(rows, directions: dict[str, str]):
    """The one of `rows` (tied on the objective) that no other dominates, then the lowest
    latency-like column, then the smallest arch_id."""
    from search import pareto_mask

    if len(rows) > 1 and directions:
        undominated = pareto_mask(rows, directions)
        if undominated.any():
            rows = rows[undominated]
    keys = [c for c in LATENCY_COLUMNS if c in rows.columns][:1] + ["arch_id"]
    return rows.sort_values(keys, na_position="last", kind="stable").iloc[0]


def _search_run(run: RunLike) -> Run:
    from nasbench.runs import load_run

    opened = run if isinstance(run, Run) else load_run(run)
    if opened.manifest.get("command") != "search":
        raise UserError(f"{opened.path} is a `{opened.manifest.get('command')}` run, not a search run")
    return opened


def export(run: RunLike, *, arch_id: str | None = None, pick: str | Sequence[str] = (),
           objective: str | None = None, pick_from: str | None = None) -> ExportResult:
    """Export one evaluated arch of a search run: by `arch_id`, or picked by `pick` constraints
    (e.g. "latency_ms <= 5") from the run's Pareto front (`pick_from="front"`, the default) or
    from every evaluation (`pick_from="all"`); `choose_row` documents the rule."""
    picks = [pick] if isinstance(pick, str) else list(pick)
    _check_from(pick_from)
    opened = _search_run(run)
    with RunLock(opened.path):  # a search still writing this run would change its table
        return _export(opened, arch_id, picks, objective, pick_from)


def _export(opened: Run, arch_id: str | None, picks: list[str], objective: str | None,
            pick_from: str | None) -> ExportResult:
    from safetensors.torch import save_model

    import supernets
    from nasbench.data.fixed import FixedSubset
    from nasbench.onnx_export import export_onnx, onnx_top1
    from nasbench.progress import echo
    from nasbench.runners.config import stored_config
    from nasbench.runners.search import SearchConfig, load_supernet
    from nasbench_core.atomic import atomic_path
    from search.evaluations import objective_directions, read_table

    cfg = stored_config(opened, SearchConfig)
    if cfg.benchmark is not None:
        raise UserError(f"run {opened.path} searched the tabular benchmark {cfg.benchmark.name}: "
                        "its archs have no weights to export")
    df, metadata = read_table(opened.path / "evaluations.parquet")
    row = choose_row(df, metadata, arch_id=arch_id, pick=picks, objective=objective,
                     constraints=cfg.constraints, objectives=cfg.objectives, pick_from=pick_from)
    picked_from = (pick_from or "front") if picks else None
    shown = list(objective_directions(metadata, cfg.objectives))
    shown += [objective] if objective and objective not in shown else []
    echo(_chosen_line(df, metadata, row, shown, picked_from, cfg))
    net, data, info = load_supernet(cfg, "cpu")
    arch = net.space.parse(row["arch"])
    aid = net.space.arch_id(arch)
    calib, val = FixedSubset.read(opened.path).loaders(data)
    net.set_active(arch)
    supernets.recalibrate_bn(net, calib, len(calib))
    subnet = net.extract(arch).eval()
    res = arch.get("resolution", data.resolution)
    out = opened.path / "subnets"
    with atomic_path(out / f"{aid}.safetensors") as tmp:
        save_model(subnet, str(tmp))
    checked = export_onnx(subnet, (data.in_chans, res, res), out / f"{aid}.onnx")
    echo(f"onnxruntime max abs diff: {checked.max_abs_diff:.3g}")
    top1 = None
    if "top1" in row.index:  # the shipped file, scored on the samples the table was scored on
        top1 = onnx_top1(checked.onnx_path, supernets.base.batches_for(val, arch),
                         lambda x: supernets.prepare_input(x, arch))
        echo(f"exported ONNX top1 on the run's fixed subset: {top1:.4f} "
             f"(table: {float(row['top1']):.4f})")
    metrics = {k: float(row[k]) for k in metadata.get("directions", {}) if k in row.index}
    record = {
        "arch": arch, "metrics": metrics, "trained": info["trained"],
        "onnx": f"subnets/{aid}.onnx", "safetensors": f"subnets/{aid}.safetensors",
        "input_shape": [1, data.in_chans, res, res], "max_abs_diff": checked.max_abs_diff,
        "opset": checked.opset, "picked_by": picks or None, "picked_from": picked_from,
        "exported_top1": top1,
    }
    opened.write_json(f"subnets/{aid}.json", record)
    opened.update_manifest(exports={**opened.manifest.get("exports", {}), aid: record})
    echo(f"exported {aid} -> {opened.path / record['onnx']}")
    return _result(opened, aid, record)


def _format(value: Any) -> str:
    """4 significant digits; large whole counts (macs, params) in full; NaN/NA as nan."""
    import pandas as pd

    if pd.isna(value):
        return "nan"
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) >= 1e4 else f"{value:.4g}"


def _chosen_line(df, metadata: dict, row, shown: Sequence[str], picked_from: str | None,
                 cfg) -> str:
    """`chosen ID: top1=0.8123 latency_ms_pred=1.234 (front, 12 feasible of 40)`."""
    values = " ".join(f"{c}={_format(row[c])}" for c in shown if c in row.index)
    if picked_from is None:
        return f"chosen {row['arch_id']}: {values} (--arch-id)"
    feasible, front = run_front(df, metadata, cfg.constraints, cfg.objectives)
    where = f"{picked_from}, {int(feasible.sum())} feasible of {len(df)}"
    if picked_from == "all":
        at = df.index.get_loc(row.name)
        where += "" if front[at] else "; not on the front"
    return f"chosen {row['arch_id']}: {values} ({where})"


def _result(run: Run, aid: str, record: dict[str, Any]) -> ExportResult:
    return ExportResult(
        arch_id=aid, arch=dict(record["arch"]), metrics=dict(record["metrics"]),
        onnx=run.path / record["onnx"], safetensors=run.path / record["safetensors"],
        input_shape=tuple(record["input_shape"]), max_abs_diff=float(record["max_abs_diff"]),
        opset=int(record["opset"]), trained=bool(record["trained"]), picked_by=record["picked_by"],
        picked_from=record.get("picked_from"), exported_top1=record.get("exported_top1"),
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
