"""`train.recipe: pada`: PA&DA path and data importance sampling (Lu et al. 2023).

The defining behaviour: drawn paths and drawn examples follow the importance weights (a
chi-square test over many draws), the weights are the mean gradient norms per choice and the
|softmax - onehot| proxies per example, credited to the right choices and examples, and tau
mixes them with uniform.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import ConfigError, UserError
from nasbench_core.seeding import torch_generator
from supernets.train import TrainHParams, train_supernet
from supernets.training.pada import (
    DataImportance,
    PadaPlanner,
    PathImportance,
    mixed,
    sample_grad_proxy,
)


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create("resnet", preset="tiny", num_classes=10, in_chans=1)


def test_mixed_is_tau_importance_plus_uniform():
    np.testing.assert_allclose(mixed(np.array([1.0, 3.0]), 0.5), [0.5 * 0.25 + 0.25,
                                                                    0.5 * 0.75 + 0.25])


def test_paths_follow_the_mean_gradient_norms_of_their_choices():
    space = tiny().space
    path = PathImportance(space)
    res = space.names.index("resolution")
    # Resolution choice j gets norms j+1 (twice, mean j+1): its weight is (j+1)/sum.
    for j, value in enumerate(space["resolution"].choices):
        for _ in range(2):
            path.observe({**space.largest(), "resolution": value}, float(j + 1))
    path.refresh(tau=1.0)
    weights = np.arange(1, 6) / 15
    np.testing.assert_allclose(path.probs[res], weights)
    rng = np.random.default_rng(0)
    draws = [path.sample(rng)["resolution"] for _ in range(4000)]
    counts = [draws.count(v) for v in space["resolution"].choices]
    assert chisquare(counts, weights * 4000).pvalue > 1e-3
    uniform = chisquare(counts).pvalue
    assert uniform < 1e-6  # and clearly not uniform
    # Other dims saw only their largest choice: unseen choices get the dim's mean -> uniform.
    np.testing.assert_allclose(path.probs[space.names.index("block0.expand")], [1 / 3] * 3)


def test_inactive_dims_get_no_credit():
    space = tiny().space
    path = PathImportance(space)
    arch = {**space.largest(), "stage0.depth": 1}  # block1 (stage 0's second) is skipped
    gated = [n for n, (by, at) in space.gated.items() if by == "stage0.depth"]
    assert gated
    path.observe(arch, 1.0)
    for name in gated:
        assert path.counts[space.names.index(name)].sum() == 0
    assert path.counts[space.names.index("stage0.depth")].sum() == 1


def test_examples_follow_their_proxies_and_observations_land_on_the_drawn_indices():
    data = DataImportance(6)
    data.scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 15.0])
    counts = np.zeros(6)
    for epoch in range(200):
        data.draw(1.0, 0, epoch)
        counts += np.bincount(data.order, minlength=6)
    assert chisquare(counts, data.scores / data.scores.sum() * counts.sum()).pvalue > 1e-3
    data.draw(0.0, 0, 0)
    data.observe(np.array([7.0, 8.0]))
    assert data.scores[data.order[1]] == 8.0 and data.position == 2


def test_proxy_is_the_norm_of_the_cross_entropy_gradient():
    logits = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 3, 1, 4])
    torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
    np.testing.assert_allclose(sample_grad_proxy(logits.detach(), y),
                               logits.grad.norm(dim=-1).numpy(), rtol=1e-5)


class SeenDataset(TensorDataset):
    """Records the index of every example it hands out."""

    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.seen: list[int] = []

    def __getitem__(self, index):
        self.seen.append(int(index))
        return super().__getitem__(index)


def indexed_loader(n: int = 40, batch: int = 8, spy: bool = False):
    """Example i is the constant image i with label i % 10."""
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 16, 16).clone()
    y = torch.arange(n) % 10
    dataset = (SeenDataset if spy else TensorDataset)(x, y)
    return DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch_generator(0))


def test_the_rebuilt_loader_yields_the_drawn_order():
    cfg = TrainHParams.from_recipe("pada", epochs=2)
    planner = PadaPlanner(cfg, tiny().space)
    loader = planner.wrap_loader(indexed_loader())
    planner.data.scores[:] = np.r_[np.ones(20), np.full(20, 9.0)]
    planner.begin_epoch(1, seed=0)  # tau 0.5
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in loader]).long().numpy()
    np.testing.assert_array_equal(seen, planner.data.order)
    assert (seen >= 20).mean() > 0.6  # the heavy half is drawn more often


def test_training_records_the_true_grad_norms_and_proxies(tmp_path):
    """Through `train_supernet`: each step's path is credited with the net's global grad norm
    before clipping, each example with its proxy; the state survives a resume."""
    net = tiny()
    norms: list[float] = []
    expected = np.ones(40)
    original = PadaPlanner.observe

    def spy(self, ctx, members, logits, y):
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in ctx.net.parameters()
                                          if p.grad is not None))))
        at = self.data.position
        expected[self.data.order[at:at + len(y)]] = sample_grad_proxy(logits, y)
        original(self, ctx, members, logits, y)

    cfg = TrainHParams.from_recipe("pada", epochs=1, warmup_epochs=0, max_steps_per_epoch=3,
                                   precision="fp32", grad_clip=1e-3)
    PadaPlanner.observe = spy
    try:
        train_supernet(net, indexed_loader(), None, cfg, checkpoint_dir=tmp_path)
    finally:
        PadaPlanner.observe = original
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    state = meta["planner"]
    res_sums = np.asarray(state["path"]["sums"][0])
    assert res_sums.sum() == pytest.approx(sum(norms), rel=1e-5)
    assert max(norms) > 1e-2  # measured before clipping to 1e-3
    np.testing.assert_allclose(state["data"]["scores"], expected)
    assert (expected != 1.0).sum() >= 12  # 3 batches of 8 drawn with replacement


def test_options_and_unsupported_loaders_are_one_line_errors():
    assert TrainHParams.from_recipe("pada").pada == {"path": True, "data": True,
                                                     "tau_start": 0.0, "tau_end": 1.0}
    for bad, message in (({"tau_end": 1.5}, "train.pada.tau_end: expected a number in"),
                         ({"path": False, "data": False}, "path or data")):
        with pytest.raises(ConfigError, match=message):
            TrainHParams.from_dict({"recipe": "pada", "pada": bad}, prefix="train.")
    planner = PadaPlanner(TrainHParams.from_recipe("pada"), tiny().space)
    with pytest.raises(UserError, match="train.pada.data needs a torch DataLoader"):
        planner.wrap_loader([(torch.zeros(1), torch.zeros(1))])


def test_resume_draws_what_the_uninterrupted_run_drew(tmp_path):
    """Epoch 2 (tau 0.5, the tables of epoch 1) after an epoch-boundary resume trains the same
    paths on the same examples as the run that never stopped."""
    cfg = TrainHParams.from_recipe("pada", epochs=2, warmup_epochs=0, max_steps_per_epoch=3,
                                   precision="fp32")

    def trained(net) -> list:
        out: list = []
        original = net.set_active
        net.set_active = lambda arch: (out.append(dict(arch)), original(arch))[1]
        return out

    full, full_loader = tiny(), indexed_loader(spy=True)
    full_archs, full_seen = trained(full), full_loader.dataset.seen
    train_supernet(full, full_loader, None, cfg, arch_sampler_seed=2)
    train_supernet(tiny(), indexed_loader(), None, cfg.replace(epochs=1),
                   checkpoint_dir=tmp_path, arch_sampler_seed=2)
    resumed, resumed_loader = tiny(), indexed_loader(spy=True)
    resumed_archs, resumed_seen = trained(resumed), resumed_loader.dataset.seen
    train_supernet(resumed, resumed_loader, None, cfg, checkpoint_dir=tmp_path, resume=True,
                   arch_sampler_seed=2)
    assert resumed_archs == full_archs[3:]
    assert resumed_seen == full_seen[len(full_seen) - len(resumed_seen):]
    assert len(resumed_seen) >= 24


class Killed(Exception):
    pass


def test_a_mid_epoch_resume_keeps_the_tables_and_the_drawn_order(tmp_path):
    """Stopped 1 step into epoch 2 (a step checkpoint every 2 steps) and resumed: the
    importance tables at the end equal the uninterrupted run's, so the remaining steps credited
    the same paths and examples."""
    cfg = TrainHParams.from_recipe("pada", epochs=2, warmup_epochs=0, max_steps_per_epoch=3,
                                   precision="fp32", checkpoint_every=2)

    def kill(epoch, done, total):
        if (epoch, done) == (1, 1):
            raise Killed

    train_supernet(tiny(), indexed_loader(), None, cfg, checkpoint_dir=tmp_path / "full",
                   arch_sampler_seed=2)
    with pytest.raises(Killed):
        train_supernet(tiny(), indexed_loader(), None, cfg, checkpoint_dir=tmp_path / "cut",
                       arch_sampler_seed=2, on_progress=kill)
    train_supernet(tiny(), indexed_loader(), None, cfg, checkpoint_dir=tmp_path / "cut",
                   arch_sampler_seed=2, resume=True)

    def final_state(path):
        return json.loads(sorted(path.glob("epoch_*.json"))[-1].read_text())["planner"]

    full, cut = final_state(tmp_path / "full"), final_state(tmp_path / "cut")
    assert full["data"]["position"] == 24
    np.testing.assert_allclose(cut["data"]["scores"], full["data"]["scores"], rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(cut["path"]["sums"]),
                               np.concatenate(full["path"]["sums"]), rtol=1e-6)
