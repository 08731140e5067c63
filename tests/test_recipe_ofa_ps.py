"""`train.recipe: ofa_ps`: OFA progressive shrinking (Cai et al. 2020).

The defining behaviour: phases run largest -> kernel -> depth -> expand; over many steps a
phase's members vary exactly the dimensions released so far (the rest stay at their maximum);
a run resumed inside a phase keeps that phase's released dimensions.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import supernets
from nasbench_core.errors import ConfigError, UserError
from nasbench_core.seeding import torch_generator
from supernets.train import TrainHParams, train_supernet
from supernets.training.progressive import ProgressiveShrinking, dim_group
from supernets.training.recipe_options import ProgressiveOptions


def net_of(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return supernets.create(family, preset="tiny", num_classes=10, in_chans=1)


def varied(shrinking: ProgressiveShrinking, epoch: int, steps: int = 300) -> set[str]:
    """The dimensions whose value differs from the maximum in some member of `steps` steps."""
    space = shrinking.space
    top = space.largest()
    out: set[str] = set()
    for step in range(steps):
        for m in shrinking.plan(2, 0, step, epoch):
            out |= {k for k, v in m.arch.items() if v != top[k] and space.is_active(m.arch, k)}
    return out


def names(space, *groups) -> set[str]:
    return {d.name for d in space if dim_group(d.name) in groups and len(d.choices) > 1}


@pytest.mark.parametrize(("family", "phases"), [
    ("mbv3", ["largest", "kernel", "depth", "expand"]),
    ("resnet", ["largest", "depth", "expand"]),
    ("vit", ["largest", "depth", "expand", "width"]),
])
def test_phases_release_their_dims_in_ofa_order(family, phases):
    space = net_of(family).space
    ps = ProgressiveShrinking(space, ProgressiveOptions(), len(phases))
    assert ps.phases == phases
    others = {d.name for d in space if dim_group(d.name) is None and len(d.choices) > 1}
    assert varied(ps, 0) == set()  # the largest alone
    assert [m.role for m in ps.plan(2, 0, 0, 0)] == ["largest"]
    for epoch in range(1, len(phases)):
        assert ps.phase(epoch) == epoch
        assert varied(ps, epoch) == names(space, *phases[1:epoch + 1]) | others


def test_phase_epochs_and_the_last_phase_running_to_the_end():
    space = net_of("mbv3").space
    ps = ProgressiveShrinking(space, ProgressiveOptions(phase_epochs=[1, 2, 1, 1]), 7)
    assert [ps.phase(e) for e in range(7)] == [0, 1, 1, 2, 3, 3, 3]
    even = ProgressiveShrinking(space, ProgressiveOptions(), 10)
    assert [even.phase(e) for e in range(10)] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]


def digits(n: int = 32, batch: int = 16):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
    y = torch.tensor(data.target[:n], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch_generator(0))


def recorded(net) -> list[dict]:
    """The arch of each `set_active` call during training, in order."""
    out: list[dict] = []
    original = net.set_active
    net.set_active = lambda arch: (out.append(dict(arch)), original(arch))[1]
    return out


def test_resume_inside_a_phase_keeps_its_released_dims(tmp_path):
    """Phases largest (1 epoch), kernel (2), depth (1): a run stopped after epoch 2 (inside
    the kernel phase) and resumed trains in epoch 3 what the uninterrupted run did, and only
    the kernel (and resolution) dims vary there."""
    cfg = TrainHParams.from_recipe("ofa_ps", epochs=4, warmup_epochs=0, max_steps_per_epoch=2,
                                   precision="fp32", bn_recal_batches=1,
                                   ofa_ps={"phases": ["kernel", "depth"],
                                           "phase_epochs": [1, 2, 1]})
    full = net_of("mbv3")
    full_archs = recorded(full)
    train_supernet(full, digits(), None, cfg.replace(epochs=3), arch_sampler_seed=1)

    part = net_of("mbv3")
    train_supernet(part, digits(), None, cfg.replace(epochs=2), checkpoint_dir=tmp_path,
                   arch_sampler_seed=1)
    resumed = net_of("mbv3")
    resumed_archs = recorded(resumed)
    train_supernet(resumed, digits(), None, cfg.replace(epochs=3), checkpoint_dir=tmp_path,
                   resume=True, arch_sampler_seed=1)
    per_step = 1 + cfg.num_random
    epoch3 = full_archs[-2 * per_step:]
    assert resumed_archs[:2 * per_step] == epoch3
    space = full.space
    top = space.largest()
    kernel_only = names(space, "kernel") | {"resolution"}
    assert any(a != top for a in epoch3)
    assert all({k for k, v in a.items() if v != top[k]} <= kernel_only for a in epoch3)


def test_bad_phases_are_one_line_errors():
    with pytest.raises(UserError, match="no elastic kernel"):
        ProgressiveShrinking(net_of("resnet").space, ProgressiveOptions(phases=["kernel"]), 4)
    with pytest.raises(UserError, match="expected 3 entries"):
        ProgressiveShrinking(net_of("resnet").space, ProgressiveOptions(phase_epochs=[1, 1]), 4)
    with pytest.raises(UserError, match="need at least 4 epochs"):
        ProgressiveShrinking(net_of("mbv3").space, ProgressiveOptions(), 3)
    for bad, message in (
        ({"phases": ["channels"]}, "train.ofa_ps.phases: expected groups from"),
        ({"phases": ["depth", "depth"]}, "without repeats"),
        ({"phases": ["depth"], "phase_epochs": [1, 0]}, "integers >= 1"),
        ({"phases": ["depth"], "phase_epochs": [1]}, "expected 2 entries"),
        ({"phases": "depth"}, "expected a list"),
    ):
        with pytest.raises(ConfigError, match=message):
            TrainHParams.from_dict({"recipe": "ofa_ps", "ofa_ps": bad}, prefix="train.")
