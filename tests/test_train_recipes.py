"""Training recipes (`train.recipe`, BigNAS), the external teacher and `train.precision`.

Each test checks a recipe's defining behaviour against a hand computation: the gamma values
right after init, the lr per epoch, which members run with dropout, which loss is smoothed,
which logits are the distillation targets, the autocast dtype, the skipped scheduler step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import ConfigError
from nasbench_core.seeding import torch_generator
from supernets.train import TrainHParams, step_plan, train_supernet
from supernets.training.loop import StepContext, train_step
from supernets.training.optim import build_optimizer, build_scheduler, lr_factor
from supernets.training.regularize import MemberRegularization, zero_init_residual_

FAST = dict(epochs=1, lr=0.05, warmup_epochs=0, max_steps_per_epoch=1, bn_recal_batches=1,
            val_max_batches=1, grad_clip=None, precision="fp32")


def digits(n: int = 32, batch: int = 16, channels: int = 1):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear").repeat(1, channels, 1, 1)
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch_generator(0))


def tiny(family: str = "mbv3", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return supernets.create(family, preset="tiny", num_classes=10, in_chans=1, **kwargs)


def batch():
    x, y = next(iter(digits()))
    return x, y


def context(net, cfg, teacher=None, scaler=None):
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, cfg, 10)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    return StepContext(net, net, optimizer, scheduler, scaler, cfg, torch.device("cpu"), False,
                       teacher=teacher, regularization=MemberRegularization(net, cfg))


def record_logits(net) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    net.register_forward_hook(lambda m, a, o: out.append(o.detach().float()))
    return out


def smoothed_ce(logits, y, eps):
    logp = logits.log_softmax(-1)
    return -((1 - eps) * logp.gather(1, y[:, None]).squeeze(1) + eps * logp.mean(-1)).mean()


def kl(teacher, student):
    p = teacher.softmax(-1)
    return (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()


# -- the recipe registry ----------------------------------------------------------------------
def test_recipe_supplies_defaults_and_user_keys_win():
    cfg = TrainHParams.from_dict({"recipe": "bignas", "dropout": 0.3, "epochs": 4})
    assert (cfg.recipe, cfg.dropout, cfg.epochs) == ("bignas", 0.3, 4)
    assert (cfg.zero_init_residual, cfg.lr_schedule, cfg.min_lr_ratio, cfg.regularize) == (
        True, "exp", 0.05, "largest")
    assert TrainHParams.from_dict({}) == TrainHParams()  # `default` is the field defaults
    assert TrainHParams.from_dict(cfg.to_dict()) == cfg  # round trip (Ray workers, resume)
    known = r"\['attentivenas', 'bignas', 'default', 'instatune', 'ofa_ps', 'pada'\]"
    with pytest.raises(ConfigError, match=rf"^train\.recipe: expected one of {known}"):
        TrainHParams.from_dict({"recipe": "bigmas"}, prefix="train.")


# -- zero-init of the last BN of each residual block ------------------------------------------
def _gammas(net):
    return {name: m.weight.detach().clone() for name, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_mbv3_zero_init_zeroes_exactly_the_last_bn_of_blocks_with_a_skip():
    net = tiny("mbv3")
    zero_init_residual_(net)
    expected = {"first.body.4"} | {f"blocks.{i}.project_bn" for i, b in enumerate(net.blocks)
                                   if b.dw.stride == 1 and b.in_ch == b.out_ch}
    assert len(expected) == 4  # the first block and three stride-1 blocks of the tiny preset
    for name, gamma in _gammas(net).items():
        assert bool((gamma == 0).all()) == (name in expected), name
        assert bool((gamma == 1).all()) == (name not in expected), name


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_resnet_zero_init_zeroes_the_last_bn_of_every_block(preset):
    torch.manual_seed(0)
    net = supernets.create("resnet", preset=preset, num_classes=10, in_chans=1)
    zero_init_residual_(net)
    last = "bn3" if preset == "default" else "bn2"  # bottleneck / basic
    expected = {f"blocks.{i}.{last}" for i in range(len(net.blocks))}
    for name, gamma in _gammas(net).items():
        assert bool((gamma == 0).all()) == (name in expected), name


def test_vit_zero_init_makes_every_block_the_identity():
    net = tiny("vit")
    zero_init_residual_(net)
    x = torch.randn(2, 5, net.blocks[0].norm1.weight.shape[0])
    for block in net.blocks:
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    assert net.head.weight.abs().sum() > 0  # only the residual branches


def test_train_supernet_applies_zero_init_only_when_the_recipe_asks():
    for zero, expect in ((True, 0.0), (False, 1.0)):
        net = tiny("mbv3")
        cfg = TrainHParams(**{**FAST, "lr": 1e-12}, zero_init_residual=zero, sampling="uniform")
        train_supernet(net, digits(), None, cfg)
        assert float(net.blocks[1].project_bn.weight.detach().abs().max()) == pytest.approx(
            expect, abs=1e-6)


# -- exponential decay with a constant ending -------------------------------------------------
def test_exp_schedule_decays_per_epoch_and_ends_at_the_floor():
    steps, epochs, warmup = 5, 9, 1
    cfg = TrainHParams(epochs=epochs, warmup_epochs=warmup, lr_schedule="exp", min_lr_ratio=0.05)
    decay = 0.05 ** (1 / (0.75 * (epochs - warmup)))  # floor reached at 3/4 of the decay phase
    f = lr_factor(cfg, steps)
    assert [f(s) for s in range(steps)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    for k in range(epochs - warmup):
        assert f(warmup * steps + k * steps) == pytest.approx(max(0.05, decay ** k)), k
    assert f(warmup * steps + 6 * steps) == pytest.approx(0.05)  # 6 >= 0.75 * 8: the floor
    assert f(epochs * steps - 1) == 0.05
    g = lr_factor(cfg.replace(lr_decay=0.5, min_lr_ratio=0.1), steps)
    assert [g(steps + k * steps) for k in range(5)] == pytest.approx([1, 0.5, 0.25, 0.125, 0.1])
    assert g(steps + 2) == pytest.approx(0.5 ** (2 / steps))  # smooth within an epoch


def test_scheduler_follows_the_exp_curve_through_the_optimizer():
    cfg = TrainHParams(epochs=4, warmup_epochs=0, lr=0.2, lr_schedule="exp", lr_decay=0.5,
                       min_lr_ratio=0.2)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch=2)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[::2] == pytest.approx([0.2, 0.1, 0.05, 0.04])


# -- dropout and drop-path on the largest child only ------------------------------------------
@pytest.mark.parametrize("family", ["mbv3", "resnet", "vit"])
def test_family_regularizers_act_in_training_only(family):
    net = tiny(family)
    x = torch.randn(4, 1, 32, 32)
    net.eval()
    ref = net(x)
    net.set_regularization(0.5, 0.5)
    torch.testing.assert_close(net(x), ref, rtol=0, atol=0)  # eval: no dropout, no drop-path
    net.train()
    for rates in ((0.5, 0.0), (0.0, 0.5)):  # each regularizer on its own is stochastic
        net.set_regularization(*rates)
        assert not torch.equal(net(x), net(x)), rates
    net.set_regularization(0.0, 0.0)
    assert torch.equal(net(x), net(x))
    net.set_regularization(0.0, 0.3)
    rates = [b.drop_path_rate for b in net._drop_path_blocks()]
    n = len(rates)
    assert rates == pytest.approx([0.3 * i / (n - 1) for i in range(n)])  # linear in depth


def test_families_default_to_no_regularization():
    for family in ("mbv3", "resnet", "vit"):
        net = tiny(family)
        assert net.regularization == (0.0, 0.0)
        assert "dropout" not in net.build_config()
    assert tiny("mbv3", dropout=0.2).build_config()["dropout"] == 0.2


@pytest.mark.parametrize(("regularize", "expect_small"), [("largest", (0.0, 0.0)),
                                                          ("all", (0.2, 0.1))])
def test_only_the_largest_member_runs_with_dropout_and_drop_path(regularize, expect_small):
    net = tiny("mbv3")
    seen = []
    net.register_forward_pre_hook(lambda m, a: seen.append(m.regularization))
    cfg = TrainHParams(**FAST, dropout=0.2, drop_path=0.1, regularize=regularize, num_random=2)
    x, y = batch()
    members = step_plan(net.space, "sandwich", 2, 0, 0)
    train_step(context(net, cfg), x, y, members)
    assert seen == [(0.2, 0.1)] + [expect_small] * 3


def test_smaller_members_are_deterministic_under_the_bignas_recipe():
    """Dropout on the largest only: the smallest's logits equal a dropout-free forward."""
    net = tiny("mbv3")
    logits = record_logits(net)
    cfg = TrainHParams(**FAST, dropout=0.5, drop_path=0.5, regularize="largest")
    x, y = batch()
    members = step_plan(net.space, "sandwich", 0, 0, 0)
    ref = tiny("mbv3")
    ref.set_active(members[1].arch)
    expected = ref(supernets.prepare_input(x, members[1].arch)).detach()
    train_step(context(net, cfg), x, y, members)
    torch.testing.assert_close(logits[1], expected, rtol=1e-5, atol=1e-6)


def test_train_supernet_restores_the_nets_own_rates():
    net = tiny("mbv3", dropout=0.05)
    cfg = TrainHParams(**FAST, dropout=0.3, drop_path=0.2, regularize="largest")
    train_supernet(net, digits(), None, cfg)
    assert net.regularization == (0.05, 0.0)


# -- label smoothing on the largest; in-place KD for the others -------------------------------
def test_label_smoothing_only_in_the_largest_loss():
    net = tiny("mbv3")
    with torch.no_grad():
        net.head[-1].weight.mul_(300)  # confident logits: smoothing changes the loss clearly
    logits = record_logits(net)
    cfg = TrainHParams(**FAST, label_smoothing=0.2, num_random=1)
    x, y = batch()
    losses = train_step(context(net, cfg), x, y, step_plan(net.space, "sandwich", 1, 0, 0))
    largest, smallest, rand = logits
    assert float(losses["largest"][0]) == pytest.approx(float(smoothed_ce(largest, y, 0.2)), rel=1e-5)
    assert float(losses["largest"][0]) != pytest.approx(float(F.cross_entropy(largest, y)), rel=1e-3)
    assert float(losses["smallest"][0]) == pytest.approx(float(kl(largest, smallest)), rel=1e-5)
    assert float(losses["random"][0]) == pytest.approx(float(kl(largest, rand)), rel=1e-5)


# -- external teacher -------------------------------------------------------------------------
class ConstantTeacher(nn.Module):
    """Logits that ignore the input: the KD target is then known in advance."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_teacher_logits_are_the_kd_targets_and_the_largest_keeps_the_labels():
    net = tiny("mbv3")
    logits = record_logits(net)
    target = torch.linspace(-1, 1, 10)
    cfg = TrainHParams(**FAST, num_random=1, label_smoothing=0.1)
    x, y = batch()
    ctx = context(net, cfg, teacher=ConstantTeacher(target))
    losses = train_step(ctx, x, y, step_plan(net.space, "sandwich", 1, 0, 0))
    largest, smallest, rand = logits
    t = target.expand(len(y), -1)
    assert float(losses["smallest"][0]) == pytest.approx(float(kl(t, smallest)), rel=1e-5)
    assert float(losses["random"][0]) == pytest.approx(float(kl(t, rand)), rel=1e-5)
    assert float(losses["smallest"][0]) != pytest.approx(float(kl(largest, smallest)), rel=1e-3)
    assert float(losses["largest"][0]) == pytest.approx(float(smoothed_ce(largest, y, 0.1)), rel=1e-5)


def test_uniform_member_distills_from_the_teacher():
    net = tiny("mbv3")
    logits = record_logits(net)
    target = torch.linspace(1, -1, 10)
    cfg = TrainHParams(**FAST, sampling="uniform")
    x, y = batch()
    losses = train_step(context(net, cfg, teacher=ConstantTeacher(target)), x, y,
                        step_plan(net.space, "uniform", 0, 0, 0))
    assert float(losses["uniform"][0]) == pytest.approx(
        float(kl(target.expand(len(y), -1), logits[0])), rel=1e-5)


def test_train_supernet_freezes_the_teacher():
    teacher = ConstantTeacher(torch.zeros(10)).train()
    train_supernet(tiny("mbv3"), digits(), None, TrainHParams(**FAST), teacher=teacher)
    assert not teacher.training and not teacher.logits.requires_grad
    assert teacher.logits.grad is None and torch.equal(teacher.logits, torch.zeros(10))


# -- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                                  ("fp32", torch.float32), ("auto", torch.float32)])
def test_precision_sets_the_autocast_dtype_inside_the_forward(precision, dtype, tmp_path):
    from supernets.checkpoint import read_checkpoint_meta

    net = tiny("mbv3")
    seen = []
    net.blocks[0].expand.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    cfg = TrainHParams(**{**FAST, "precision": precision}, sampling="uniform")
    result = train_supernet(net, digits(), None, cfg, checkpoint_dir=tmp_path)
    assert seen and set(seen) == {dtype}
    scaler = read_checkpoint_meta(result.checkpoint)["grad_scaler"]
    assert (scaler is not None) == (dtype == torch.float16)  # a GradScaler for fp16 only


def test_scheduler_does_not_step_when_the_grad_scaler_skips():
    net = tiny("mbv3")
    cfg = TrainHParams(**{**FAST, "precision": "fp16"}, sampling="uniform")
    ctx = context(net, cfg, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))
    ctx.use_amp, ctx.amp_dtype = True, torch.float16
    x, y = batch()
    plan = step_plan(net.space, "uniform", 0, 0, 0)
    before = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    handle = net.head[-1].weight.register_hook(lambda g: g * math.inf)  # an overflow
    train_step(ctx, x, y, plan)
    handle.remove()
    assert ctx.scheduler.last_epoch == 0  # skipped: the lr schedule stays put
    assert ctx.scaler.get_scale() == 2.0 ** 7
    for name, p in net.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    train_step(ctx, x, y, plan)
    assert ctx.scheduler.last_epoch == 1  # a real step moves it


# -- the runner: teacher config and recipe checks ---------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A finished one-step run of the tiny mbv3 supernet on digits (the from_run teacher)."""
    import nasbench

    run = nasbench.train({
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "data": {"name": "digits", "limit": 32, "batch_size": 16},
        "train": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 1,
                  "bn_recal_batches": 1, "val_max_batches": 1},
        "device": "cpu", "run": {"root": tmp_path, "name": "teacher"}}, quiet=True)
    return run.path


def _config(train, **extra):
    from nasbench.runners.train import TrainConfig

    return TrainConfig.model_validate({"train": train, **extra})


@pytest.mark.parametrize(("teacher", "message"), [
    ({}, "give exactly one of from_timm or from_run"),
    ({"from_timm": "resnet18", "from_run": "x"}, "give exactly one of from_timm or from_run"),
    ({"from_timm": "resnet18"}, "needs pretrained: true or weights: PATH"),
    ({"from_timm": "no_such_net", "pretrained": True}, "unknown timm model 'no_such_net'"),
    ({"from_timm": "resnet18", "weights": "/nope.safetensors"}, "does not exist"),
    ({"from_timm": "resnet18", "pretrained": True, "arch": "largest"}, "arch goes with from_run"),
    ({"from_run": "/nope"}, "is not a run directory"),
    ({"from_timm": "resnet18", "pretrained": "maybe"}, "train.teacher.pretrained:"),
    ({"from_run": "/nope", "sizes": 3}, "train.teacher.sizes: Extra inputs"),
    ("resnet18", "expected a mapping"),
])
def test_bad_teacher_configs_are_one_line_errors(teacher, message):
    with pytest.raises(ConfigError) as info:
        _config({"teacher": teacher})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_zero_init_is_refused_on_imported_weights(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match="zero_init_residual \\(set by recipe 'bignas'\\) would "
                                          "erase the imported supernet weights"):
        _config({"recipe": "bignas"}, supernet={"from_timm": "resnet18", "weights": str(weights)})


def test_teacher_with_wrong_classes_fails_before_the_run_dir(tmp_path):
    import timm
    from safetensors.torch import save_file

    import nasbench

    model = timm.create_model("resnet18", num_classes=7, in_chans=1)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    root = tmp_path / "runs"
    with pytest.raises(ConfigError, match="timm model 'resnet18' predicts 7 classes, the data has 10"):
        nasbench.train({
            "supernet": {"family": "mbv3", "preset": "tiny"},
            "data": {"name": "digits", "limit": 32, "batch_size": 16},
            "train": {"epochs": 1, "warmup_epochs": 0,
                      "teacher": {"from_timm": "resnet18", "weights": str(weights)}},
            "device": "cpu", "run": {"root": root, "name": "t"}}, quiet=True)
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.slow
def test_bignas_run_distills_from_a_run_teacher(run_dir, tmp_path):
    """End to end: a second run with `recipe: bignas` learns from the first run's largest."""
    import nasbench

    run = nasbench.train({
        "supernet": {"family": "mbv3", "preset": "tiny"},
        "data": {"name": "digits", "limit": 32, "batch_size": 16},
        "train": {"recipe": "bignas", "epochs": 2, "warmup_epochs": 0, "max_steps_per_epoch": 1,
                  "bn_recal_batches": 1, "val_max_batches": 1,
                  "teacher": {"from_run": str(run_dir), "arch": "largest"}},
        "device": "cpu", "run": {"root": tmp_path, "name": "student"}}, quiet=True)
    assert run.manifest["hparams"]["recipe"] == "bignas"
    assert len(run.metrics) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_ray_workers_distill_from_the_teacher(tmp_path, monkeypatch):
    """The teacher reaches the Ray Train workers: a confident constant teacher makes the
    smallest's KD loss large, where in-place KD from the (near-uniform) largest is small."""
    from nasbench.distributed.train import RayScaling, ray_session, train_on_ray

    monkeypatch.setenv("NASBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    net = supernets.create("vit", preset="tiny", num_classes=10, in_chans=1, img_size=16,
                           patch_size=8)
    cfg = TrainHParams(**{**FAST, "val_max_batches": 1}, num_random=0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        teacher[1].weight.zero_()
        teacher[1].bias.copy_(50 * F.one_hot(torch.tensor(3), 10).float())
    loss = {}
    with ray_session(None):
        for name, t in (("inplace", None), ("teacher", teacher)):
            outcome = train_on_ray(
                tmp_path / name, build_config=net.build_config(), hparams=cfg, seed=0,
                data={"name": "digits", "resolution": 16, "channels": 1, "batch_size": 8},
                scaling=RayScaling(num_workers=1), teacher=t)
            loss[name] = outcome.history[0]["loss_smallest"]
    assert loss["teacher"] > 1.0 and loss["inplace"] < 0.2, loss
