"""Regenerate the built-in tabular benchmark: train and measure every arch of the space.

    python -m nasbench.tabular.generate [--out PATH] [--epochs 10] [--limit N]
    python -m nasbench.tabular.generate --add-curves   # learning curves for an existing table

Accuracy is val top-1 on `digits` (16x16, seeded split) after a fixed recipe; `top1_curve` is
the val top-1 after every epoch (its last entry is `top1`: evaluating does not touch the
training RNG, so adding curves to a table retrains each arch to the same bits and checks it);
MACs and params from torch.utils.flop_counter; latency is the median CPU time of one thread at
batch 1, which stays stable when the machine is busy (wall time does not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import pandas as pd
import torch

from nasbench.classify import evaluate, fit
from nasbench.data import load_dataset
from nasbench.tabular.builtin import TABLE_FILE
from nasbench.tabular.builtin_space import SPACE, build_model
from nasbench_core.atomic import atomic_path
from nasbench_core.seeding import seed_everything
from search.costs import count_macs, count_params
from search.latency.measure import LatencySettings, measure_latency

RESOLUTION = 16
CURVE_NOTE = "validation top-1 after each epoch; the last entry is top1"


def all_archs() -> list[dict]:
    import itertools

    grids = [d.choices for d in SPACE.dims]
    return [dict(zip(SPACE.names, combo, strict=True)) for combo in itertools.product(*grids)]


def train_arch(arch: dict, data, epochs: int, seed: int) -> tuple[torch.nn.Module, list[float]]:
    """The arch trained by the table's recipe, and its val top-1 after every epoch."""
    seed_everything(seed)
    model = build_model(arch, in_chans=1, num_classes=data.num_classes)
    curve: list[float] = []
    fit(model, data.train_loader, epochs=epochs, lr=0.05,
        on_epoch=lambda _epoch, _loss: curve.append(evaluate(model, data.val_loader)))
    return model, curve


def measure_arch(arch: dict, data, epochs: int, seed: int, settings: LatencySettings) -> dict:
    model, curve = train_arch(arch, data, epochs, seed)
    shape = (1, RESOLUTION, RESOLUTION)
    latency = measure_latency(model, shape, settings)
    return {
        "arch_id": SPACE.arch_id(arch),
        "arch": SPACE.canonical_json(arch),
        "top1": curve[-1],
        "top1_curve": curve,
        "latency_ms": latency.median_ms,
        "latency_iqr_ms": latency.iqr_ms,
        "macs": count_macs(model, shape),
        "params": count_params(model),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data_files" / TABLE_FILE)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N archs (a smoke run)")
    parser.add_argument("--add-curves", action="store_true",
                        help="retrain the archs of the table at --out for their learning curves only")
    args = parser.parse_args(argv)
    if args.add_curves:
        add_curves(args.out, args.epochs, args.seed, args.limit)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nasbench.progress import track

    torch.set_num_threads(1)
    data = load_dataset(name="digits", resolution=RESOLUTION, channels=1, seed=args.seed)
    settings = LatencySettings(backend="torch", device="cpu", batch=1, threads=1, warmup=10, repeats=50,
                               clock="cpu")
    archs = all_archs()[: args.limit]
    started = time.perf_counter()
    rows = [measure_arch(arch, data, args.epochs, args.seed, settings) for arch in track(archs, "archs")]
    frame = pd.DataFrame(rows)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {
        "space": SPACE.to_json(),
        "dataset": f"digits {RESOLUTION}px seed {args.seed}",
        "top1": "validation top-1 accuracy as a fraction in [0, 1]",
        "top1_curve": CURVE_NOTE,
        "recipe": f"SGD nesterov lr 0.05 cosine, {args.epochs} epochs, batch 64",
        "latency": "torch eager, CPU time, 1 thread, batch 1, median of 50",
        "directions": '{"top1": "max", "latency_ms": "min", "macs": "min", "params": "min"}',
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": f"{time.perf_counter() - started:.0f}",
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           **{k.encode(): v.encode() for k, v in meta.items()}})
    with atomic_path(args.out) as tmp:
        pq.write_table(table, tmp)
    print(f"wrote {len(frame)} archs to {args.out} in {meta['seconds']} s")


def add_curves(path: Path, epochs: int, seed: int, limit: int | None) -> None:
    """Add `top1_curve` to the table at `path`: each arch retrained by the table's recipe, whose
    last epoch must reproduce the stored top1 (else the table came from another recipe).
    With `limit`, only check the first archs and leave the table as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nasbench.progress import track
    from nasbench.tabular.builtin import load_builtin

    torch.set_num_threads(1)
    bench = load_builtin(path)
    data = load_dataset(name="digits", resolution=RESOLUTION, channels=1, seed=seed)
    frame = bench.table.reset_index(drop=True)
    rows = frame if limit is None else frame.head(limit)
    curves = []
    for arch_json, top1 in track(list(zip(rows["arch"], rows["top1"], strict=True)), "curves"):
        _, curve = train_arch(json.loads(arch_json), data, epochs, seed)
        if abs(curve[-1] - top1) > 1e-9:  # one val image is 1/359: any other recipe differs
            raise SystemExit(f"{path}: arch {arch_json} retrained to top1 {curve[-1]} but the table "
                             f"says {top1}: not this recipe (epochs {epochs}, seed {seed})")
        curves.append(curve)
    if limit is not None:
        print(f"{len(curves)} archs reproduce their top1 (a smoke run: {path} is unchanged)")
        return
    frame = frame.assign(top1_curve=curves)
    metadata = {**bench.metadata, "top1_curve": CURVE_NOTE}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    print(f"added learning curves of {len(curves)} archs to {path}")


if __name__ == "__main__":
    main()
