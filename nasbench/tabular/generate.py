"""Regenerate the built-in tabular benchmark: train and measure every arch of the space.

    python -m nasbench.tabular.generate [--out PATH] [--epochs 10] [--limit N]

Accuracy is val top-1 on `digits` (16x16, seeded split) after a fixed recipe; MACs and params
from torch.utils.flop_counter; latency is the median CPU time of one thread at batch 1, which
stays stable when the machine is busy (wall time does not).
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def all_archs() -> list[dict]:
    import itertools

    grids = [d.choices for d in SPACE.dims]
    return [dict(zip(SPACE.names, combo, strict=True)) for combo in itertools.product(*grids)]


def measure_arch(arch: dict, data, epochs: int, seed: int, settings: LatencySettings) -> dict:
    seed_everything(seed)
    model = build_model(arch, in_chans=1, num_classes=data.num_classes)
    fit(model, data.train_loader, epochs=epochs, lr=0.05)
    shape = (1, RESOLUTION, RESOLUTION)
    latency = measure_latency(model, shape, settings)
    return {
        "arch_id": SPACE.arch_id(arch),
        "arch": SPACE.canonical_json(arch),
        "top1": evaluate(model, data.val_loader),
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    main()
