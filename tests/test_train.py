"""Supernet training recipe: hparams validation, sandwich plan, one step per sandwich, resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import CheckpointError, ConfigError
from nasbench_core.seeding import seed_everything, torch_generator
from supernets.checkpoint import list_checkpoints
from supernets.train import TrainHParams, distill_loss, step_plan, train_supernet
from supernets.training.loop import StepContext, train_step
from supernets.training.optim import build_optimizer, warmup_cosine


def digits_loaders(n: int = 96, batch: int = 16, seed: int = 0):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=batch, shuffle=True, generator=torch_generator(seed))
    val = DataLoader(ds, batch_size=48)
    return train, val


def tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)


FAST = dict(epochs=2, lr=0.05, warmup_epochs=0.5, num_random=1, max_steps_per_epoch=2,
            bn_recal_batches=1, val_max_batches=1)


# -- hyperparameters --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs: expected an integer >= 1, got 0"),
        ({"lr": -1.0}, "lr: expected a number > 0"),
        ({"optimizer": "lamb"}, "optimizer: expected one of ('sgd', 'adamw'), got 'lamb'"),
        ({"sampling": "greedy"}, "sampling: expected one of ('sandwich', 'uniform', 'attentive'"),
        ({"label_smoothing": 1.0}, "label_smoothing: expected a number in [0, 1)"),
        ({"warmup_epochs": 3.0, "epochs": 2}, "warmup_epochs: expected less than epochs (2)"),
        ({"grad_clip": 0.0}, "grad_clip: expected a number > 0 or null"),
    ],
)
def test_hparams_reject_bad_values(changes, message):
    with pytest.raises(ConfigError) as info:
        TrainHParams(**changes)
    assert message in str(info.value)


def test_hparams_from_dict_names_unknown_and_mistyped_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'; allowed: epochs, lr"):
        TrainHParams.from_dict({"lrr": 0.1}, prefix="train.")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'ten'"):
        TrainHParams.from_dict({"epochs": "ten"}, prefix="train.")
    with pytest.raises(ConfigError, match=r"train\.num_random: expected int, got True"):
        TrainHParams.from_dict({"num_random": True}, prefix="train.")
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number > 0, got 0.0"):
        TrainHParams.from_dict({"lr": 0}, prefix="train.")
    hp = TrainHParams.from_dict({"lr": 1, "grad_clip": None, "optimizer": "adamw"})
    assert hp.lr == 1.0 and isinstance(hp.lr, float) and hp.grad_clip is None
    assert TrainHParams.from_dict(hp.to_dict()) == hp


# -- sampling, optimizer, schedule, loss -----------------------------------------------------
def test_sandwich_plan_is_a_function_of_seed_and_step():
    space = tiny_net().space
    plan = step_plan(space, "sandwich", 3, seed=7, step=11)
    assert [m.role for m in plan] == ["largest", "smallest", "random", "random", "random"]
    assert plan[0].arch == space.largest() and plan[1].arch == space.smallest()
    assert step_plan(space, "sandwich", 3, seed=7, step=11) == plan
    assert step_plan(space, "sandwich", 3, seed=7, step=12) != plan
    assert step_plan(space, "sandwich", 3, seed=8, step=11) != plan
    uniform = step_plan(space, "uniform", 3, seed=7, step=11)
    assert [m.role for m in uniform] == ["uniform"]
    space.validate(uniform[0].arch)


def test_norm_and_bias_params_get_no_weight_decay():
    net = tiny_net()
    opt = build_optimizer(net, TrainHParams(weight_decay=0.1))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        expected = 0.0 if p.ndim <= 1 else 0.1
        assert decay[id(p)] == expected, name
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert isinstance(build_optimizer(net, TrainHParams(optimizer="adamw")), torch.optim.AdamW)


def test_warmup_then_cosine_per_step():
    f = warmup_cosine(total_steps=10, warmup_steps=4, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(10) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 10))


def test_distill_loss_is_kl_to_the_teacher():
    teacher = torch.randn(5, 10)
    assert distill_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(5, 10)
    expected = F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="batchmean")
    assert distill_loss(student, teacher, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sandwich_accumulates_member_gradients_into_one_step():
    """The step's update is -lr times the SUM of member gradients, and step() runs once."""
    cfg = TrainHParams(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                       grad_clip=None, num_random=1, label_smoothing=0.1, distill_temperature=2.0)
    net = tiny_net()
    ref = copy.deepcopy(net)
    x, y = next(iter(digits_loaders()[0]))
    members = step_plan(net.space, "sandwich", 1, seed=0, step=0)

    teacher = None
    for m in members:  # the rule written out by hand on a copy
        ref.set_active(m.arch)
        logits = ref(supernets.prepare_input(x, m.arch))
        if m.role == "largest":
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            teacher = logits.detach()
        else:
            loss = distill_loss(logits, teacher, 2.0)
        loss.backward()

    optimizer = build_optimizer(net, cfg)
    calls = []
    optimizer.register_step_post_hook(lambda *a: calls.append(1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ctx = StepContext(net, net, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False),
                       cfg, torch.device("cpu"), False)
    losses = train_step(ctx, x, y, members)
    assert sorted(losses) == ["largest", "random", "smallest"]
    assert len(calls) == 1
    for (name, p), p_ref in zip(net.named_parameters(), ref.parameters(), strict=True):
        expected = p_ref.detach() - 0.1 * (p_ref.grad if p_ref.grad is not None else 0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


# -- the loop ---------------------------------------------------------------------------------
def test_training_writes_metrics_and_epoch_checkpoints(tmp_path):
    train, val = digits_loaders()
    rows = []
    result = train_supernet(tiny_net(), train, val, TrainHParams(**FAST, keep_checkpoints=1),
                            checkpoint_dir=tmp_path, on_metrics=rows.append)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [2, 4]
    for key in ("loss_largest", "loss_smallest", "loss_random", "val_acc_smallest",
                "val_acc_largest", "lr", "images_per_s"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["val_acc_largest"] <= 1.0
    assert result.epochs_completed == 2 and result.global_step == 4
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_0002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_0002.json", "epoch_0002.optim.safetensors", "epoch_0002.safetensors"
    ]


def test_uniform_sampling_trains_one_path_per_step():
    train, _ = digits_loaders()
    rows = []
    train_supernet(tiny_net(), train, None, TrainHParams(**{**FAST, "epochs": 1},
                   sampling="uniform"), on_metrics=rows.append)
    assert "loss_uniform" in rows[0] and "loss_largest" not in rows[0]


class Killed(Exception):
    pass


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    cfg = TrainHParams(**FAST, optimizer="adamw")

    seed_everything(0)
    straight = tiny_net(0)
    train, val = digits_loaders()
    full = train_supernet(straight, train, val, cfg, checkpoint_dir=tmp_path / "a",
                          arch_sampler_seed=3)

    seed_everything(0)
    train, val = digits_loaders()

    def kill_in_epoch_two(epoch, step, total):
        if epoch == 1:
            raise Killed  # as if the process died mid-epoch, after epoch 1's checkpoint

    with pytest.raises(Killed):
        train_supernet(tiny_net(0), train, val, cfg, checkpoint_dir=tmp_path / "b",
                       arch_sampler_seed=3, on_progress=kill_in_epoch_two)

    seed_everything(123)  # a fresh process: other init, other global RNG
    resumed_net = tiny_net(99)
    train, val = digits_loaders()
    resumed = train_supernet(resumed_net, train, val, cfg, checkpoint_dir=tmp_path / "b",
                             resume=True, arch_sampler_seed=3)

    assert resumed.resumed_from.name == "epoch_0001"
    assert resumed.global_step == full.global_step
    deterministic = ("epoch", "step", "lr", "loss_largest", "loss_smallest", "loss_random",
                     "val_acc_smallest", "val_acc_largest")
    for row, ref in zip(resumed.history, full.history, strict=True):
        assert {k: row[k] for k in deterministic} == {k: ref[k] for k in deterministic}
    a, b = straight.state_dict(), resumed_net.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_changed_hyperparameters(tmp_path):
    train, _ = digits_loaders()
    cfg = TrainHParams(**{**FAST, "epochs": 1})
    train_supernet(tiny_net(), train, None, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"train\.lr was 0\.05, now 0\.1"):
        train_supernet(tiny_net(), train, None, cfg.replace(lr=0.1), checkpoint_dir=tmp_path,
                       resume=True)


def test_pinned_arch_trains_exactly_one_subnet():
    from supernets.train import PinnedArch

    net = tiny_net()
    arch = net.space.sample(5)
    pinned = PinnedArch(net, arch)
    assert pinned.space.cardinality == 1
    assert [m.arch for m in step_plan(pinned.space, "uniform", 0, seed=1, step=9)] == [arch]
    assert {id(p) for p in pinned.parameters()} == {id(p) for p in net.parameters()}


def test_resume_with_more_epochs_stretches_the_schedule_and_says_how(tmp_path):
    """1 epoch trained, resumed with epochs=3: two more epochs run on a schedule rebuilt for 3
    epochs, which is what a 3-epoch run would have used from the resume step on."""
    from supernets.checkpoint import latest_checkpoint, read_checkpoint_meta
    from supernets.training.loop import epochs_change
    from supernets.training.optim import warmup_cosine

    train, _ = digits_loaders()
    cfg = TrainHParams(**{**FAST, "epochs": 1, "warmup_epochs": 0})
    train_supernet(tiny_net(), train, None, cfg, checkpoint_dir=tmp_path)
    longer = cfg.replace(epochs=3)
    meta = read_checkpoint_meta(latest_checkpoint(tmp_path))
    steps = meta["steps_per_epoch"]
    expect = warmup_cosine(3 * steps, 0, cfg.min_lr_ratio)(steps)
    assert epochs_change(meta, longer, steps) == (
        f"train.epochs 1 -> 3: the schedule is stretched to 3 epochs from epoch 1; the lr "
        f"multiplier at the resume point goes from {cfg.min_lr_ratio:.3g} to {expect:.3g}")
    rows = []
    result = train_supernet(tiny_net(), train, None, longer, checkpoint_dir=tmp_path, resume=True,
                            on_metrics=rows.append)
    assert result.epochs_completed == 3 and [r["epoch"] for r in rows] == [2, 3]
    reference = warmup_cosine(3 * steps, 0, cfg.min_lr_ratio)
    assert rows[0]["lr"] == pytest.approx(cfg.lr * reference(2 * steps - 1), rel=1e-6)
    with pytest.raises(CheckpointError, match="has trained 3 epochs, more than train.epochs=2"):
        train_supernet(tiny_net(), train, None, cfg.replace(epochs=2), checkpoint_dir=tmp_path,
                       resume=True)
