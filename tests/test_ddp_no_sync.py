"""Under DDP a sandwich step all-reduces once (members accumulate under `no_sync`), and the
weights it reaches equal those of reducing after every member — on a real 2-process gloo group."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
STEPS = 3


class _SyncEveryMember(torch.nn.parallel.DistributedDataParallel):
    """DDP without `no_sync` as the loop sees it: the step all-reduces after every member."""

    no_sync = None


def _worker(rank: int, port: int, sync_every_member: bool, out: str) -> None:
    import supernets
    from supernets.train import TrainHParams, train_supernet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = supernets.create("mbv3", preset="tiny", num_classes=4, in_chans=1)
    g = torch.Generator().manual_seed(rank)
    data = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g))
            for _ in range(STEPS)]
    reductions = []

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def counting_hook(state, bucket):
        reductions.append(bucket.index())
        return allreduce_hook(None, bucket)

    def wrap(module):
        cls = _SyncEveryMember if sync_every_member else torch.nn.parallel.DistributedDataParallel
        ddp = cls(module, find_unused_parameters=True, bucket_cap_mb=1000)  # one bucket
        ddp.register_comm_hook(None, counting_hook)
        return ddp

    cfg = TrainHParams(epochs=1, lr=0.05, warmup_epochs=0, max_steps_per_epoch=STEPS,
                       precision="fp32", val_max_batches=1, bn_recal_batches=1)
    train_supernet(net, data, data[:1], cfg, ddp_wrap=wrap, arch_sampler_seed=0)
    if rank == 0:
        torch.save({"reductions": len(reductions), "state": net.state_dict()}, out)
    dist.destroy_process_group()


def _run(tmp_path, sync_every_member: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / f"rank0-{sync_every_member}.pt")
    mp.spawn(_worker, args=(port, sync_every_member, out), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def test_one_all_reduce_per_sandwich_step_and_the_same_weights(tmp_path):
    once = _run(tmp_path, sync_every_member=False)
    every = _run(tmp_path, sync_every_member=True)
    assert once["reductions"] == STEPS  # one per step (a single bucket)
    assert every["reductions"] == 4 * STEPS  # the sandwich's 4 members, one each
    for name, value in once["state"].items():
        torch.testing.assert_close(value, every["state"][name], rtol=1e-5, atol=1e-6, msg=name)
