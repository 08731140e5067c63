"""`train.sync_bn` on a real 2-process gloo group: one sandwich step over two half batches gives
the BN running statistics (and weights) of one process over the whole batch; without it the
statistics are per half batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import supernets
from supernets.ops.norm import DynamicBatchNorm2d
from supernets.train import TrainHParams, train_supernet
from supernets.training.sync_bn import synced_batchnorm

CFG = TrainHParams(epochs=1, lr=0.05, warmup_epochs=0, max_steps_per_epoch=1, num_random=1,
                   precision="fp32")  # SGD: Adam's first step is sign(grad), noise where grad ~ 0


def whole_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 4, (16,), generator=g)


def tiny_net():
    torch.manual_seed(0)
    return supernets.create("mbv3", preset="tiny", num_classes=4, in_chans=1)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    x, y = whole_batch()
    half = [(x[8 * rank: 8 * rank + 8], y[8 * rank: 8 * rank + 8])]
    states = {}
    for sync in (True, False):
        net = tiny_net()
        wrap = lambda m: torch.nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)  # noqa: E731
        train_supernet(net, half, None, CFG.replace(sync_bn=sync), ddp_wrap=wrap)
        states[sync] = net.state_dict()
        assert all(type(m).__name__.startswith(("Dynamic", "BatchNorm")) for m in net.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))  # classes restored
    if rank == 0:
        torch.save(states, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_synced_bn_on_a_slice_is_batch_norm_in_a_one_process_group(tmp_path, momentum):
    """The synced forward, running-stat update and gradient equal F.batch_norm's on the active
    channels (a one-process group: the merge of one part is that part)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        bns = [DynamicBatchNorm2d(8, momentum=momentum) for _ in range(2)]
        for bn in bns:
            bn.set_active(5)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bns[1].load_state_dict(bns[0].state_dict())
        x = torch.randn(6, 5, 4, 4, generator=torch.Generator().manual_seed(1)) * 3 + 1
        xs = [x.clone().requires_grad_(True) for _ in bns]
        with synced_batchnorm(bns[1]) as swapped:
            assert swapped == 1 and type(bns[1]).__name__ == "SyncDynamicBatchNorm2d"
            outs = [bn(xi) for bn, xi in zip(bns, xs, strict=True)]
            for out in outs:
                (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        assert type(bns[1]) is DynamicBatchNorm2d
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-5)
        for name, value in bns[0].state_dict().items():
            torch.testing.assert_close(bns[1].state_dict()[name], value, msg=name)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(bns[1], name).grad, getattr(bns[0], name).grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_bn_matches_one_process_over_the_concatenated_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    states = torch.load(out, weights_only=True)
    reference = tiny_net()
    train_supernet(reference, [whole_batch()], None, CFG)
    expected = reference.state_dict()
    stats = [k for k in expected if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 20
    for name in stats:  # elastic and fixed-width BN layers alike
        torch.testing.assert_close(states[True][name], expected[name], rtol=1e-4, atol=1e-5,
                                   msg=name)
    for name, value in expected.items():  # the gradients through the statistics match too
        if value.is_floating_point():
            torch.testing.assert_close(states[True][name], value, rtol=1e-4, atol=1e-5, msg=name)
    gaps = [(states[False][k] - expected[k]).abs().max().item() for k in stats]
    assert max(gaps) > 1e-2  # per-process statistics are those of the half batch


@pytest.mark.ray
@pytest.mark.slow
def test_nasbench_train_on_two_ray_workers_with_sync_bn(tmp_path):
    import pandas as pd

    import nasbench

    run = nasbench.train({
        "run": {"name": "sync", "root": str(tmp_path)}, "data": {"name": "digits", "limit": 64,
                                                                  "batch_size": 8},
        "supernet": {"family": "mbv3", "preset": "tiny"}, "device": "cpu",
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "num_random": 1, "warmup_epochs": 0,
                  "bn_recal_batches": 1, "val_max_batches": 1, "sync_bn": True},
        "runner": "ray", "ray": {"num_workers": 2, "cpus_per_worker": 0.5},
    }, quiet=True)
    assert run.status == "completed"
    assert list(pd.read_csv(run.path / "metrics.csv")["epoch"]) == [1]
