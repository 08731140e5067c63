"""`nasbench bench supernets --set parts=ddp`: all-reduces per sandwich step, 2 gloo workers vs 1.

The mbv3-tiny supernet runs BigNAS sandwich steps (`train_step`: largest + smallest + 2 random,
one SGD step) under DistributedDataParallel on a local gloo group, once with 1 process and once
with 2, each process on one thread and the same global batch split evenly. A comm hook counts
the buckets DDP all-reduces; the steps call DDP's `no_sync` for every member but the last, so
the goal is one all-reduce per step (4 without `no_sync`). Step time is rank 0's median wall
time (the ranks wait for each other, so CPU time would hide that) and its CPU time.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    """One DDP process: `cfg["steps"] + 1` sandwich steps (the first one untimed)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    import supernets
    from nasbench.bench.supernets import _step_context
    from supernets.train import step_plan
    from supernets.training.loop import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(cfg["seed"])
        res, batch = cfg["resolution"], cfg["batch"]
        net = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=3,
                               resolutions=[res])
        reduced: list[int] = []

        def counting_hook(state, bucket):
            reduced.append(bucket.index())
            return allreduce_hook(state, bucket)

        ddp = DistributedDataParallel(net, find_unused_parameters=True)
        ddp.register_comm_hook(None, counting_hook)
        ctx = _step_context(net, torch.device("cpu"))
        ctx.model = ddp
        gen = torch.Generator().manual_seed(cfg["seed"])
        x = torch.randn(batch, 3, res, res, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        shard = slice(rank * batch // world, (rank + 1) * batch // world)
        x, y = x[shard], y[shard]
        wall, cpu, reductions = [], [], []
        for step in range(cfg["steps"] + 1):
            members = step_plan(net.space, "sandwich", 2, cfg["seed"], step)
            dist.barrier()
            before, start, cpu_start = len(reduced), time.perf_counter(), time.process_time()
            train_step(ctx, x, y, members)
            if step > 0:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
            reductions.append(len(reduced) - before)
        if rank == 0:
            Path(out).write_text(json.dumps({
                "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
                "all_reduces_per_step": reductions,
                "param_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
            }))
    finally:
        dist.destroy_process_group()


def ddp_speed(opts, batch: int, steps: int, resolution: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    cfg = {"seed": opts.seed, "batch": batch, "steps": steps, "resolution": resolution}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="nasbench-ddp-") as tmp:
        for world in (1, 2):
            out = str(Path(tmp) / f"world{world}.json")
            mp.spawn(_worker, args=(world, _free_port(), cfg, out), nprocs=world, join=True)
            runs[world] = json.loads(Path(out).read_text())
    per_step = [n for run in runs.values() for n in run["all_reduces_per_step"]]
    return {
        "supernet": "mbv3 tiny", "backend": "gloo", "global_batch": batch,
        "resolution": resolution, "timed_steps": steps, "members_per_step": 4,
        "threads_per_worker": 1, "param_bytes": runs[1]["param_bytes"],
        "all_reduces_per_step": {f"{w}_workers": run["all_reduces_per_step"]
                                 for w, run in runs.items()},
        "one_all_reduce_per_step": set(per_step) == {1},
        "step_wall_s": {f"{w}_workers": round(run["wall_s"], 4) for w, run in runs.items()},
        "step_cpu_s_rank0": {f"{w}_workers": round(run["cpu_s"], 4) for w, run in runs.items()},
        "speedup_2_vs_1": round(runs[1]["wall_s"] / runs[2]["wall_s"], 3),
        "clock": "rank 0 wall time per step (median), after a barrier",
        "goal": "1 all-reduce per sandwich step",
    }
