"""`train.recipe: instatune`: elastic fine-tuning of a pretrained model (Sridhar et al. 2023).

The defining behaviour: the recipe's fine-tuning defaults apply (user keys win); the members
other than the largest distil from the frozen original model, the supernet as it was when
training started (also after a resume), not from the drifting largest child; and a config
without a pretrained source is refused in one line before a run directory exists.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import ConfigError
from supernets.base import prepare_input
from supernets.train import TrainHParams, train_supernet
from supernets.training import loop


def test_fine_tuning_defaults_and_user_keys_win():
    cfg = TrainHParams.from_recipe("instatune")
    assert (cfg.lr, cfg.warmup_epochs, cfg.distill_from_initial, cfg.sampling) == (
        0.005, 0.25, True, "sandwich")
    assert TrainHParams.from_recipe("instatune", lr=0.001).lr == 0.001
    assert not TrainHParams().distill_from_initial


def _config(supernet, train=None):
    from nasbench.runners.train import TrainConfig

    return TrainConfig.model_validate({"supernet": supernet,
                                       "train": {"recipe": "instatune", **(train or {})}})


@pytest.mark.parametrize("supernet", [{}, {"family": "resnet"}, {"from_timm": "resnet18"}])
def test_refused_without_a_pretrained_source(supernet):
    with pytest.raises(ConfigError) as info:
        _config(supernet)
    message = str(info.value)
    assert "train.distill_from_initial (set by recipe 'instatune')" in message
    assert "supernet.from_timm with pretrained: true or weights" in message
    assert "\n" not in message


def test_accepted_with_weights_and_exclusive_with_a_teacher(tmp_path):
    pretrained = {"from_timm": "resnet18", "weights": str(tmp_path / "w.safetensors")}
    assert _config(pretrained).supernet.from_timm == "resnet18"
    assert _config({"from_ofa": str(tmp_path / "ofa.pth")}).train["recipe"] == "instatune"
    with pytest.raises(ConfigError, match="both pick the distillation targets"):
        _config(pretrained, {"teacher": {"from_timm": "resnet18", "pretrained": True}})


def digits(n: int = 32, batch: int = 16):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=batch)  # fixed order: batches known


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)


def original_logits(net, x):
    model = copy.deepcopy(net).eval()
    arch = net.space.largest()
    model.set_active(arch)
    with torch.no_grad():
        return model(prepare_input(x, arch))


@pytest.mark.parametrize("resumed", [False, True])
def test_the_others_distil_from_the_frozen_original_model(monkeypatch, tmp_path, resumed):
    cfg = TrainHParams.from_recipe("instatune", epochs=2, warmup_epochs=0, lr=0.5,
                                   max_steps_per_epoch=2, precision="fp32", num_random=1)
    if resumed:  # epoch 1 trained and checkpointed; the resumed run rebuilds the original
        train_supernet(tiny(), digits(), None, cfg.replace(epochs=1), checkpoint_dir=tmp_path)
    net = tiny()
    batches = [x for x, _ in digits()]
    expected = [original_logits(net, x) for x in batches]
    targets: list[torch.Tensor] = []
    distill = loop.distill_loss
    monkeypatch.setattr(loop, "distill_loss",
                        lambda s, t, temp: (targets.append(t.detach().clone()), distill(s, t, temp))[1])
    result = train_supernet(net, digits(), None, cfg, checkpoint_dir=tmp_path, resume=resumed)
    steps = 2 if resumed else 4
    assert result.global_step == 4 and len(targets) == 2 * steps  # smallest + 1 random
    for i, target in enumerate(targets):
        torch.testing.assert_close(target, expected[(i // 2) % 2], rtol=1e-5, atol=1e-5)
    drifted = original_logits(net, batches[0])
    assert not torch.allclose(drifted, expected[0], atol=1e-3)  # the largest did move
