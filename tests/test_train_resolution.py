"""`train.resolution_mode`: `data` loads each batch at the sizes the step trains, resampled from
the source images with antialiasing (OFA's per-batch image size), `tensor` interpolates one
batch inside the step (the old behaviour). Issue 17."""

from __future__ import annotations

import functools
from itertools import islice

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import nasbench
import supernets
from nasbench.data import load_dataset, sources
from nasbench.data.bundle import _split_indices
from nasbench.data.fixed import FixedSubset
from nasbench.data.resample import StepResolutionLoader
from nasbench_core.errors import ConfigError
from nasbench_core.seeding import seed_everything, torch_generator
from supernets.checkpoint import latest_checkpoint
from supernets.train import TrainHParams, train_supernet
from supernets.training.resolution import (
    resolution_choices,
    step_resolution,
    step_resolutions,
)

CHOICES = [16, 20, 24, 28, 32]  # mbv3 tiny
source = functools.cache(lambda name, seed: sources.IN_MEMORY[name](seed))


def tiny_net(seed: int = 0, in_chans: int = 1):
    torch.manual_seed(seed)
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=in_chans)


@functools.cache
def oracle(name: str, seed: int, size: int, limit: int | None = None) -> torch.Tensor:
    """The train images as torchvision makes them: source -> antialiased Resize -> Normalize
    (per-channel stats of the train images at that size)."""
    src = source(name, seed)
    train_idx, _ = _split_indices(len(src.labels), 0.2, seed)
    if limit:
        train_idx = train_idx[:limit]
    resized = v2.Resize((size, size), antialias=True)(src.images)
    mean = resized[train_idx].mean(dim=(0, 2, 3))
    std = resized[train_idx].std(dim=(0, 2, 3)).clamp_min(1e-6)
    return v2.Normalize(mean.tolist(), std.tolist())(resized[train_idx])


def test_a_data_mode_batch_is_torchvisions_antialiased_resize_of_the_sources():
    # digits are 8x8: sizes below 8 downsample, where antialiasing matters
    sizes = [4, 5, 6, 8]
    bundle = load_dataset(name="digits", resolution=8, batch_size=16, limit=64,
                          seed=0).with_resolution_mode("data")
    loader = StepResolutionLoader(bundle, sizes)
    loader.begin_epoch(0, 0)
    # the plain train loader's shuffle, batch by batch
    order = list(DataLoader(range(64), batch_size=16, shuffle=True, generator=torch_generator(0)))
    seen = set()
    for step, (xs, y) in enumerate(loader):
        rows = order[step]
        assert tuple(sorted(xs)) == step_resolutions(sizes, 0, 0, step)
        for size, x in xs.items():
            seen.add(size)
            expected = oracle("digits", 0, size, limit=64)[rows]
            assert x.shape == (16, 1, size, size)
            torch.testing.assert_close(x, expected, atol=2e-5, rtol=0)
            if size < 8:  # a downsample of the 8px tensor (tensor mode) is another image
                down = F.interpolate(bundle.train_dataset.tensors[0][rows], size=(size, size),
                                     mode="bilinear", align_corners=False)
                assert (down - expected).abs().max() > 0.05
        labels = bundle.train_dataset.tensors[1][rows]
        assert torch.equal(y, labels)
    assert len(seen) >= 3


def test_the_step_resolution_is_a_seeded_function_of_seed_epoch_and_step():
    draws = [step_resolution(CHOICES, 3, e, s) for e in range(3) for s in range(40)]
    assert draws == [step_resolution(CHOICES, 3, e, s) for e in range(3) for s in range(40)]
    assert set(draws) == set(CHOICES)  # every size is drawn
    assert draws != [step_resolution(CHOICES, 4, e, s) for e in range(3) for s in range(40)]
    assert draws[:40] != draws[40:80]  # epochs differ, as OFA's (batch, epoch) seed does
    assert all(step_resolutions(CHOICES, 3, 0, s)[0] == 16 and
               step_resolutions(CHOICES, 3, 0, s)[-1] == 32 for s in range(40))


class Recorder:
    """(active arch, input size) of every training forward of the net, and the inputs."""

    def __init__(self, net):
        self.calls: list[tuple[dict, int]] = []
        self.inputs: list[torch.Tensor] = []
        net.register_forward_pre_hook(self.hook)
        self.net = net

    def hook(self, module, args):
        if module.training and torch.is_grad_enabled():
            self.calls.append((module.active_arch, args[0].shape[-1]))
            self.inputs.append(args[0].detach().clone())


def digits_bundle(mode: str):
    return load_dataset(name="digits", resolution=32, batch_size=16, limit=96,
                        seed=0).with_resolution_mode(mode)


def loaders(mode: str):
    from nasbench.data.resample import ResolutionLoader

    bundle = digits_bundle(mode)
    if mode == "tensor":
        return bundle.train_loader, bundle.val_loader
    return (StepResolutionLoader(bundle, CHOICES),
            ResolutionLoader(bundle, lambda b: b.val_dataset))


CFG = dict(epochs=2, lr=0.05, warmup_epochs=0.5, num_random=2, bn_recal_batches=1,
           val_max_batches=1, optimizer="adamw", checkpoint_every=4)  # 6 steps per epoch


def test_the_sandwich_trains_min_max_and_one_step_resolution_each_on_data_at_that_size():
    net = tiny_net()
    rec = Recorder(net)
    train, val = loaders("data")
    cfg = TrainHParams(**{**CFG, "epochs": 2, "checkpoint_every": None},
                       resolution_mode="data")
    train_supernet(net, train, val, cfg, arch_sampler_seed=5, recal_loader=val)
    assert len(rec.calls) == 2 * 6 * 4  # epochs x steps x (largest, smallest, 2 random)
    again, _ = loaders("data")  # a fresh loader: the same shuffles as the run's
    for epoch in range(2):
        again.begin_epoch(epoch, 5)
        for step, (xs, _) in enumerate(islice(again, 6)):  # as the loop: never exhausted
            i = 4 * (6 * epoch + step)
            (largest, a), (smallest, b), (r1, c), (r2, d) = rec.calls[i:i + 4]
            assert largest == net.space.largest() and a == 32
            assert smallest == net.space.smallest() and b == 16
            res = step_resolution(CHOICES, 5, epoch, step)
            assert r1["resolution"] == r2["resolution"] == res == c == d
            for k, size in enumerate((32, 16, res, res)):  # the loaded batch, not a resize of it
                assert torch.equal(rec.inputs[i + k], xs[size])


def test_tensor_mode_keeps_the_per_arch_resolution_and_the_interpolated_batch():
    net = tiny_net()
    rec = Recorder(net)
    train, val = loaders("tensor")
    cfg = TrainHParams(**{**CFG, "epochs": 1, "checkpoint_every": None})
    assert cfg.resolution_mode == "tensor"
    train_supernet(net, train, val, cfg, arch_sampler_seed=5, recal_loader=val)
    randoms = [(arch["resolution"], size) for arch, size in rec.calls[2::4]]
    assert all(r == s for r, s in randoms)
    # archs keep their own sampled resolutions (the two random children differ somewhere)
    pairs = [(rec.calls[i + 2][0]["resolution"], rec.calls[i + 3][0]["resolution"])
             for i in range(0, len(rec.calls), 4)]
    assert any(a != b for a, b in pairs)


def bn_stats(net) -> list[torch.Tensor]:
    return [b.running_mean.clone() for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)]


def test_validation_recalibrates_and_scores_each_arch_on_data_at_its_size():
    from supernets import recalibrate_bn
    from supernets.train import evaluate_arch

    bundle = digits_bundle("data")
    _, val = loaders("data")
    arch = tiny_net().space.smallest()
    small = bundle.at(16)
    stats = {}
    for name, loader in (("data", val), ("at16", small.val_loader), ("tensor", bundle.val_loader)):
        net = tiny_net()
        net.set_active(arch)
        recalibrate_bn(net, loader, 2)
        stats[name] = bn_stats(net)
    assert all(torch.equal(a, b) for a, b in zip(stats["data"], stats["at16"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(stats["data"], stats["tensor"], strict=True))
    got = evaluate_arch(tiny_net(), arch, val, recal_loader=val, recal_batches=2)
    assert got == evaluate_arch(tiny_net(), arch, small.val_loader,
                                recal_loader=small.val_loader, recal_batches=2)
    # the fixed subset of search / export: the same samples, loaded at the arch's size
    subset = FixedSubset.draw(bundle, bn_batches=2, val_batches=2, seed=0)
    calib, fixed_val = subset.loaders(bundle)
    for batches, ref in ((calib, subset.loaders(small)[0]), (fixed_val, subset.loaders(small)[1])):
        for (x, y), (x16, y16) in zip(batches.at_resolution(16), ref, strict=True):
            assert torch.equal(x, x16) and torch.equal(y, y16)
    assert not hasattr(subset.loaders(digits_bundle("tensor"))[0], "at_resolution")


def test_a_data_mode_run_stopped_mid_epoch_resumes_bitwise_identical(tmp_path):
    cfg = TrainHParams(**CFG, resolution_mode="data")
    seed_everything(0)
    straight_net = tiny_net(0)
    train, val = loaders("data")
    straight = train_supernet(straight_net, train, val, cfg, checkpoint_dir=tmp_path / "a",
                              arch_sampler_seed=3, recal_loader=val)

    class Killed(Exception):
        pass

    def kill(epoch, done, total):
        if (epoch, done) == (1, 3):
            raise Killed

    seed_everything(0)
    train, val = loaders("data")
    with pytest.raises(Killed):
        train_supernet(tiny_net(0), train, val, cfg, checkpoint_dir=tmp_path / "b",
                       arch_sampler_seed=3, recal_loader=val, on_progress=kill)
    assert latest_checkpoint(tmp_path / "b").name == "epoch_0001_step_000002"
    seed_everything(123)
    resumed_net = tiny_net(99)
    rec = Recorder(resumed_net)
    train, val = loaders("data")
    resumed = train_supernet(resumed_net, train, val, cfg, checkpoint_dir=tmp_path / "b",
                             resume=True, arch_sampler_seed=3, recal_loader=val)
    assert resumed.global_step == straight.global_step
    assert resumed.history == [
        {**row, "images_per_s": r["images_per_s"], "epoch_time_s": r["epoch_time_s"]}
        for row, r in zip(straight.history, resumed.history, strict=True)]
    for name, value in straight_net.state_dict().items():
        assert torch.equal(value, resumed_net.state_dict()[name]), name
    # the resumed steps (epoch 1, steps 2..5) trained their children at the seeded sizes
    sizes = [size for _, size in rec.calls[2::4]]
    assert sizes == [step_resolution(CHOICES, 3, 1, s) for s in range(2, 6)]


def test_resolution_mode_is_validated_and_refused_where_it_cannot_run():
    with pytest.raises(ConfigError, match="resolution_mode"):
        TrainHParams.from_dict({"resolution_mode": "pixels"}, prefix="train.")
    from nasbench.runners.train import TrainConfig

    with pytest.raises(ConfigError, match="runner: ray"):
        TrainConfig.model_validate({"runner": "ray", "train": {"resolution_mode": "data"}})
    assert resolution_choices(tiny_net().space) == CHOICES


@pytest.mark.slow
def test_data_mode_search_and_export_agree_on_top1(tmp_path):
    data = {"name": "digits", "channels": 1, "limit": 192, "batch_size": 32}
    trained = nasbench.train({
        "data": data, "supernet": {"family": "mbv3", "preset": "tiny"},
        "train": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 3,
                  "resolution_mode": "data", "bn_recal_batches": 1, "val_max_batches": 1},
        "run": {"root": str(tmp_path), "name": "t"}}, quiet=True)
    searched = nasbench.search({
        "supernet": {"run": str(trained.path)}, "objectives": ["top1", "params"],
        "optimizer": {"name": "random", "settings": {"batch_size": 3}}, "budget": 4,
        "evaluation": {"bn_batches": 2, "val_batches": 2},
        "run": {"root": str(tmp_path), "name": "s"}}, quiet=True)
    assert searched.manifest["supernet"]["resolution_mode"] == "data"
    df = searched.evaluations
    for _, row in df.iterrows():
        result = nasbench.export(searched, arch_id=row["arch_id"], quiet=True)
        assert result.exported_top1 == pytest.approx(float(row["top1"]), abs=0)


def test_an_augmented_disk_sample_is_the_same_crop_at_every_size(tmp_path):
    from PIL import Image
    from torchvision import datasets

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    bundle = load_dataset(name="imagefolder", root=tmp_path, resolution=32, batch_size=4,
                          augment=True, seed=0).with_resolution_mode("data")
    loader = StepResolutionLoader(bundle, [16, 24, 32])
    loader.begin_epoch(0, 0)
    order = list(DataLoader(range(len(bundle.train_dataset)), batch_size=4, shuffle=True,
                            generator=torch_generator(0)))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    xs, _ = next(iter(loader))
    after = torch.get_rng_state()
    # the oracle: torchvision's own transform at each size, each from the same RNG state
    folder = datasets.ImageFolder(str(tmp_path / "train"))  # no val/: train is a Subset
    paths = [folder.samples[bundle.train_dataset.indices[i]][0] for i in order[0].tolist()]
    for size, x in xs.items():
        transform = bundle.at(size).train_dataset.dataset.transform
        torch.set_rng_state(state)
        expected = torch.stack([transform(folder.loader(p)) for p in paths])
        assert torch.equal(x, expected), size
    assert torch.equal(torch.get_rng_state(), after)  # the RNG moved on as after one size
