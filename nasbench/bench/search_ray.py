"""`nasbench bench search_ray`: a search on Ray workers against the same search on one worker.

One search config (an untrained tiny mbv3 on digits, NSGA-II populations of `pop_size`, top1 and
params) runs three ways, with the same seed and budget: in this process, on 1 Ray worker and on
`workers` Ray workers (each single-threaded, `cpus_per_worker=1`). Per way: wall time of the
whole search, and evaluations per minute in the steady state — from the journal timestamps of
the first to the last evaluation, so worker start-up (each loads the supernet once) is reported
separately as `startup_s`. The tables must be identical (arch set, order, top1, params): the
workers change how fast a search runs, never what it finds.

On this 2-core machine 2 workers compete with the driver and Ray's own processes; the goal is
>= 1.6x the evaluations per minute of 1 worker.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark


class SearchRaySettings(BenchSettings):
    budget: PositiveInt = 48
    pop_size: PositiveInt = 8
    workers: PositiveInt = 2
    resolution: PositiveInt = 32
    val_batches: PositiveInt = 4
    address: str | None = None

    quick_defaults = {"budget": 8, "pop_size": 4, "resolution": 16, "val_batches": 1}


def _config(s: SearchRaySettings, root: Path, name: str, seed: int, **changes) -> dict[str, Any]:
    return {
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "data": {"name": "digits", "resolution": s.resolution, "channels": 1},
        "objectives": ["top1", "params"],
        "optimizer": {"name": "nsga2", "settings": {"pop_size": s.pop_size}},
        "evaluation": {"bn_batches": 2, "val_batches": s.val_batches},
        "budget": s.budget, "run": {"root": str(root), "name": name, "seed": seed}, **changes,
    }


def _timed(cfg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    import pandas as pd

    import nasbench
    from search.evaluations import log_path, read_log

    started = time.perf_counter()
    run = nasbench.search(cfg, quiet=True)
    wall = time.perf_counter() - started
    stamps = read_log(log_path(run.path / "evaluations.parquet"))["timestamp"].sort_values()
    steady = (stamps.iloc[-1] - stamps.iloc[0]).total_seconds()
    rate = 60.0 * (len(stamps) - 1) / steady if steady > 0 else float("nan")
    startup = (stamps.iloc[0] - pd.Timestamp(run.manifest["started"])).total_seconds()
    return {"wall_s": round(wall, 2), "startup_s": round(startup, 2), "evaluations": len(stamps),
            "evals_per_min": round(rate, 1)}, run.evaluations


@benchmark("search_ray", help="search on N Ray workers vs 1 worker vs in-process: evals/min, same table",
           options=SearchRaySettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    from nasbench.distributed.train import ray_session

    s = SearchRaySettings.of(opts)
    torch.set_num_threads(1)
    columns = ["arch_id", "arch", "top1", "params", "generation"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local, local_df = _timed(_config(s, root, "local", opts.seed))
        with ray_session(s.address):
            ways = {}
            tables = {}
            for workers in (1, s.workers):
                ray = {"address": s.address, "num_workers": workers, "cpus_per_worker": 1}
                ways[workers], tables[workers] = _timed(
                    _config(s, root, f"ray{workers}", opts.seed, runner="ray", ray=ray))
    one, many = ways[1], ways[s.workers]
    return {
        "setup": {"supernet": "mbv3 tiny (untrained)", "data": f"digits {s.resolution}px",
                  "optimizer": f"nsga2 pop {s.pop_size}", "budget": s.budget,
                  "threads_per_worker": 1},
        "in_process": local,
        "ray_1_worker": one,
        f"ray_{s.workers}_workers": many,
        "ratios": {
            f"evals_per_min_{s.workers}_over_1_workers": round(many["evals_per_min"] / one["evals_per_min"], 2),
            f"wall_{s.workers}_over_1_workers": round(many["wall_s"] / one["wall_s"], 2),
            "evals_per_min_1_worker_over_in_process": round(one["evals_per_min"] / local["evals_per_min"], 2),
        },
        "tables_identical": {
            "1_worker_vs_in_process": bool(tables[1][columns].equals(local_df[columns])),
            f"{s.workers}_workers_vs_1_worker": bool(tables[s.workers][columns].equals(tables[1][columns])),
        },
    }
