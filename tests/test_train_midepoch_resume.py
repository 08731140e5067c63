"""`train.checkpoint_every`: step checkpoints, and a run stopped mid-epoch resumes bitwise exactly
(data order, archs, optimizer, schedule, loss sums); skipped batches are never loaded."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset

import supernets
from nasbench_core.errors import ConfigError
from nasbench_core.seeding import seed_everything, torch_generator
from supernets.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint_meta
from supernets.train import TrainHParams, train_supernet
from supernets.training.optim import lr_factor

CFG = dict(epochs=2, lr=0.05, warmup_epochs=0.5, num_random=1, bn_recal_batches=1,
           val_max_batches=1, optimizer="adamw", checkpoint_every=4)  # 6 steps per epoch


class Digits(Dataset):
    """96 digits; counts the samples it loads; `augment` adds noise from the global torch RNG
    (as torchvision's random transforms draw from it)."""

    def __init__(self, augment: bool = False):
        self.augment = augment
        data = load_digits()
        self.x = torch.tensor(data.images[:96], dtype=torch.float32).unsqueeze(1) / 16.0
        self.y = torch.tensor(data.target[:96], dtype=torch.int64)
        self.loaded = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.loaded += 1
        noise = 0.1 * torch.randn(self.x[i].shape) if self.augment else 0.0
        return self.x[i] + noise, self.y[i]


def loaders(augment: bool = False):
    ds = Digits(augment)
    train = DataLoader(ds, batch_size=16, shuffle=True, generator=torch_generator(0))
    val = DataLoader(Digits(), batch_size=48)
    return ds, train, val


def tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)


class Killed(Exception):
    pass


def kill_at(epoch_index: int, step: int):
    def hook(epoch, done, total):
        if (epoch, done) == (epoch_index, step):
            raise Killed

    return hook


def train(path, cfg, augment: bool = False, **kwargs):
    _, train_loader, val = loaders(augment)
    return train_supernet(tiny_net(0), train_loader, val, cfg, checkpoint_dir=path,
                          arch_sampler_seed=3, recal_loader=val, **kwargs)


DETERMINISTIC = ("epoch", "step", "lr", "loss_largest", "loss_smallest", "loss_random",
                 "val_acc_smallest", "val_acc_largest")


def assert_same_run(a_net, a_result, b_net, b_result):
    assert b_result.global_step == a_result.global_step
    for row, ref in zip(b_result.history, a_result.history, strict=True):
        assert {k: row[k] for k in DETERMINISTIC} == {k: ref[k] for k in DETERMINISTIC}
    a, b = a_net.state_dict(), b_net.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_step_checkpoints_are_named_and_ordered_between_epochs(tmp_path):
    cfg = TrainHParams(**CFG, keep_checkpoints=10)
    train(tmp_path, cfg)
    # global steps 4 and 8 are mid-epoch (6 steps per epoch); 12 is the end of epoch 2
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "epoch_0000_step_000004", "epoch_0001", "epoch_0001_step_000002", "epoch_0002"]
    meta = read_checkpoint_meta(tmp_path / "epoch_0001_step_000002")
    assert (meta["epoch"], meta["global_step"], meta["in_epoch"]["steps"]) == (1, 8, 2)
    assert "in_epoch" not in read_checkpoint_meta(tmp_path / "epoch_0002")


@pytest.mark.parametrize(("epoch_index", "step", "resumed_from"), [
    (0, 5, "epoch_0000_step_000004"),  # killed in the first epoch
    (1, 3, "epoch_0001_step_000002"),  # in the second, after an epoch checkpoint
])
def test_a_run_stopped_mid_epoch_resumes_bitwise_identical(tmp_path, epoch_index, step,
                                                            resumed_from):
    cfg = TrainHParams(**CFG)
    seed_everything(0)
    straight_net, (_, train_loader, val) = tiny_net(0), loaders(augment=True)
    straight = train_supernet(straight_net, train_loader, val, cfg, checkpoint_dir=tmp_path / "a",
                              arch_sampler_seed=3, recal_loader=val)

    seed_everything(0)
    with pytest.raises(Killed):
        train(tmp_path / "b", cfg, augment=True, on_progress=kill_at(epoch_index, step))
    assert latest_checkpoint(tmp_path / "b").name == resumed_from
    done = read_checkpoint_meta(tmp_path / "b" / resumed_from)["global_step"]

    seed_everything(123)  # a fresh process: other init, other global RNG
    resumed_net = tiny_net(99)
    ds, train_loader, val = loaders(augment=True)
    resumed = train_supernet(resumed_net, train_loader, val, cfg, checkpoint_dir=tmp_path / "b",
                             resume=True, arch_sampler_seed=3, recal_loader=val)
    assert resumed.resumed_from.name == resumed_from
    assert_same_run(straight_net, straight, resumed_net, resumed)
    # The resumed epoch's consumed batches were skipped by index, never loaded.
    assert ds.loaded == (12 - done) * 16


def test_resume_from_a_step_checkpoint_with_more_epochs_stretches_the_schedule(tmp_path):
    from supernets.training.loop import epochs_change

    cfg = TrainHParams(**{**CFG, "warmup_epochs": 0})
    with pytest.raises(Killed):
        train(tmp_path, cfg, on_progress=kill_at(1, 3))
    meta = read_checkpoint_meta(latest_checkpoint(tmp_path))
    assert meta["global_step"] == 8
    longer = cfg.replace(epochs=4)
    before, after = lr_factor(cfg, 6)(8), lr_factor(longer, 6)(8)
    assert after > before
    assert epochs_change(meta, longer, 6) == (
        f"train.epochs 2 -> 4: the schedule is stretched to 4 epochs from epoch 1; the lr "
        f"multiplier at the resume point goes from {before:.3g} to {after:.3g}")
    rows = []
    result = train(tmp_path, longer, resume=True, on_metrics=rows.append)
    assert result.epochs_completed == 4 and [r["epoch"] for r in rows] == [2, 3, 4]
    for row in rows:  # each row's lr is that of its epoch's last step, on the 4-epoch schedule
        assert row["lr"] == pytest.approx(cfg.lr * lr_factor(longer, 6)(row["step"] - 1), rel=1e-6)


def test_checkpoint_every_may_change_on_resume_and_is_validated(tmp_path):
    cfg = TrainHParams(**CFG)
    with pytest.raises(Killed):
        train(tmp_path, cfg, on_progress=kill_at(1, 3))
    result = train(tmp_path, cfg.replace(checkpoint_every=None), resume=True)
    assert result.epochs_completed == 2
    with pytest.raises(ConfigError, match=r"checkpoint_every: expected an integer >= 1 or null, got 0"):
        TrainHParams(checkpoint_every=0)
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every: expected int, got 2\.5"):
        TrainHParams.from_dict({"checkpoint_every": 2.5}, prefix="train.")


def test_sync_bn_without_ddp_warns_and_changes_nothing(tmp_path):
    plain_net, synced_net = tiny_net(0), tiny_net(0)
    cfg = TrainHParams(**{**CFG, "epochs": 1, "checkpoint_every": None, "max_steps_per_epoch": 2})
    seed_everything(0)
    _, train_loader, _ = loaders()
    train_supernet(plain_net, train_loader, None, cfg)
    seed_everything(0)
    _, train_loader, _ = loaders()
    with pytest.warns(UserWarning, match="train.sync_bn has no effect: training runs in one process"):
        train_supernet(synced_net, train_loader, None, cfg.replace(sync_bn=True))
    for name, value in plain_net.state_dict().items():
        assert torch.equal(value, synced_net.state_dict()[name]), name


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.checkpoint_every=0"], "train.checkpoint_every: expected an integer >= 1 or null, got 0"),
    (["train.sync_bn=maybe"], "train.sync_bn: expected bool, got 'maybe'"),
    (["train.checkpoint_every=5", "runner=ray"],
     "train.checkpoint_every is not available with runner: ray"),
])
def test_bad_options_are_one_line_before_any_run_dir(cli, tmp_path, overrides, message):
    config = tmp_path / "train.yaml"
    config.write_text(f"run: {{name: t, root: {tmp_path / 'results'}}}\ndata: {{name: digits}}\n")
    result = cli("train", str(config), *[a for o in overrides for a in ("--set", o)])
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
