"""`train.recipe: attentivenas`: BestUp / WorstUp children of the sandwich (Wang et al. 2021).

The defining behaviour: each middle child is the argmax (BestUp) or argmin (WorstUp) of its
k candidates' scores, so with a size-correlated score BestUp trains bigger archs than uniform
sampling and WorstUp smaller ones; the minibatch-loss score is minus the cross-entropy and
leaves BN statistics alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import ConfigError
from nasbench_core.seeding import torch_generator
from supernets.train import TrainHParams, train_supernet
from supernets.training import attentive
from supernets.training.attentive import attentive_plan, minibatch_scorer, pick
from supernets.training.recipe_options import AttentiveOptions


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)


def size(space, arch) -> float:
    """A MACs-correlated score: the arch's normalised choice indices, summed."""
    return float(space.features(arch).sum())


def digits(n: int = 32, batch: int = 16):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear")
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch_generator(0))


def test_pick_is_argmax_for_best_up_and_argmin_for_worst_up():
    scores = [0.3, 0.9, -1.0, 0.5]
    assert (pick(scores, "best_up"), pick(scores, "worst_up")) == (1, 2)


@pytest.mark.parametrize("mode", ["best_up", "worst_up"])
def test_each_child_is_the_extreme_of_its_own_candidates(mode):
    space = tiny().space
    seen: list[list[dict]] = []

    def score(archs):
        seen.append(list(archs))
        return [size(space, a) for a in archs]

    for step in range(20):
        seen.clear()
        members = attentive_plan(space, AttentiveOptions(mode, 5), 2, 0, step, score)
        assert [m.role for m in members] == ["largest", "smallest", "random", "random"]
        assert members[0].arch == space.largest() and members[1].arch == space.smallest()
        assert len(seen) == 2 and all(len(c) == 5 for c in seen)
        for child, candidates in zip(members[2:], seen, strict=True):
            values = [size(space, a) for a in candidates]
            best = max(values) if mode == "best_up" else min(values)
            assert size(space, child.arch) == best


def test_best_up_trains_bigger_archs_than_uniform_and_worst_up_smaller():
    space = tiny().space

    def score(archs):
        return [size(space, a) for a in archs]

    def mean_size(mode: str, k: int) -> float:
        return float(np.mean([size(space, m.arch) for step in range(300)
                              for m in attentive_plan(space, AttentiveOptions(mode, k), 1, 0,
                                                      step, score)[2:]]))

    uniform = mean_size("best_up", 1)  # one candidate: plain uniform sampling
    assert mean_size("best_up", 5) > uniform + 1.0
    assert mean_size("worst_up", 5) < uniform - 1.0


def test_minibatch_score_is_minus_the_cross_entropy_and_keeps_bn_stats():
    net = tiny()
    net.train()
    x, y = next(iter(digits()))
    archs = [net.space.largest(), net.space.smallest()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = minibatch_scorer(net, x, y, lambda: torch.autocast("cpu", enabled=False))(archs)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats too
    for arch, got in zip(archs, scores, strict=True):
        net.set_active(arch)
        with torch.no_grad():
            expected = -float(F.cross_entropy(net(supernets.base.prepare_input(x, arch)), y))
        assert got == pytest.approx(expected, rel=1e-5)


def test_training_steps_train_the_picked_children(monkeypatch):
    """Through `train_supernet`: the archs the step sets active are largest, smallest and the
    argmax of the (patched, known) scores of each child's candidates."""
    net = tiny()
    space = net.space
    monkeypatch.setattr(attentive, "minibatch_scorer",
                        lambda *a: lambda archs: [size(space, arch) for arch in archs])
    trained: list[dict] = []
    set_active = net.set_active
    monkeypatch.setattr(net, "set_active", lambda arch: (trained.append(dict(arch)),
                                                         set_active(arch))[1])
    cfg = TrainHParams.from_recipe("attentivenas", epochs=1, warmup_epochs=0,
                                   max_steps_per_epoch=2, num_random=1, precision="fp32",
                                   attentive={"candidates": 4})
    train_supernet(net, digits(), None, cfg, arch_sampler_seed=3)
    for step in range(2):
        expected = attentive_plan(space, AttentiveOptions("best_up", 4), 1, 3, step,
                                  lambda archs: [size(space, a) for a in archs])
        assert trained[3 * step: 3 * step + 3] == [m.arch for m in expected]


def test_options_are_validated_with_one_line_errors():
    cfg = TrainHParams.from_recipe("attentivenas", attentive={"mode": "worst_up"})
    assert cfg.attentive == {"mode": "worst_up", "candidates": 5}
    assert TrainHParams.from_dict(cfg.to_dict()) == cfg  # what a checkpoint / Ray worker sees
    for bad, message in (
        ({"attentive": {"mode": "best"}}, "train.attentive.mode: expected one of"),
        ({"attentive": {"candidates": 0}}, "train.attentive.candidates: expected an integer >= 1"),
        ({"attentive": {"k": 3}}, "train.attentive.k: unknown key"),
        ({"attentive": 5}, "train.attentive: expected dict"),
        ({"sampling": "sandwich", "attentive": {}}, "train.attentive: set only with sampling 'attentive'"),
    ):
        with pytest.raises(ConfigError, match=message):
            TrainHParams.from_dict({"recipe": "attentivenas", **bad}, prefix="train.")


def _score_in_process(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        net = tiny()
        net.train()
        x, y = list(digits(n=32, batch=16))[rank]  # each worker its own shard
        archs = [net.space.largest(), net.space.smallest()]
        scorer = minibatch_scorer(net, x, y, lambda: torch.autocast("cpu", enabled=False))
        out[rank] = scorer(archs)
        dist.destroy_process_group()
        out[f"local{rank}"] = scorer(archs)
    except Exception as exc:  # reported to the parent
        out[rank] = repr(exc)


@pytest.mark.slow  # two spawned processes: ~35 s on a loaded 2-core machine
def test_ddp_workers_average_the_scores_and_pick_the_same_child():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_score_in_process, args=(2, port, out), nprocs=2, join=True)
        out = dict(out)
    assert out[0] == out[1], out
    mean = np.mean([out["local0"], out["local1"]], axis=0)
    np.testing.assert_allclose(out[0], mean, rtol=1e-5)
    assert out["local0"] != out["local1"]  # the shards alone would disagree
