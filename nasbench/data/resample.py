"""Loaders for `train.resolution_mode: data`: batches loaded at the size an arch trains or is
measured at, from the source images (`DataBundle.at`), instead of interpolated tensors.

Training (`StepResolutionLoader`): each step's batch comes as {size: tensor} at the sizes
`supernets.training.resolution.step_resolutions` names for (seed, epoch, step in the epoch):
the same samples, in the same shuffled order as the plain train loader, each size loaded from
the sample's source (OFA's per-batch `MyRandomResizedCrop` size; our sandwich adds its min and
max). The sizes hang on the index lists, so a mid-epoch resume that skips index lists
(`position.batches_from`) keeps the count, and worker processes load what the main process
asked for.

Measurement (`ResolutionLoader`, `resolving`): iterable at the bundle's resolution, and
`at_resolution(r)` the same samples loaded at r; `supernets.base.batches_for` asks for it, so
validation, BN recalibration, search's top1 and export's ONNX check all see the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from nasbench.data.bundle import DataBundle
from nasbench_core.seeding import torch_generator
from supernets.training.position import batches_from
from supernets.training.resolution import step_resolutions

Key = tuple[int, tuple[int, ...]]


class _AtSizes(Dataset):
    """Sample i at each of the given sizes: ({size: image}, label). Every size is loaded from
    the same global RNG state, so an augmented sample is the same crop and flip at each size
    (the smaller members distill from the largest's logits on the same view); the state then
    moves on as after one load."""

    def __init__(self, bundle: DataBundle, split: Callable[[DataBundle], Dataset]):
        self.bundle, self.split = bundle, split

    def __len__(self) -> int:
        return len(self.split(self.bundle))  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> tuple[dict[int, torch.Tensor], Any]:
        index, sizes = key
        images, label = {}, None
        start = torch.get_rng_state()
        for size in sizes:  # each load draws the same, so the state ends as after one load
            torch.set_rng_state(start)
            image, label = self.split(self.bundle.at(size))[index]
            images[size] = torch.as_tensor(image)
        return images, label


class _SizedBatches:
    """A batch sampler's index lists, each index tagged with its step's sizes."""

    def __init__(self, batches: BatchSampler, choices: list[int], seed: int):
        self.batches, self.choices, self.seed = batches, choices, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Key]]:
        for step, indices in enumerate(self.batches):
            sizes = step_resolutions(self.choices, self.seed, self.epoch, step)
            yield [(int(i), sizes) for i in indices]


class StepResolutionLoader:
    """The data-mode train loader of `bundle` for a space with `choices` (see the module doc).
    The training loop calls `begin_epoch(epoch, seed)` before each pass (like a
    DistributedSampler's `set_epoch`), with the seed it draws the step's members from."""

    def __init__(self, bundle: DataBundle, choices: list[int]):
        self.generator = torch_generator(bundle.seed)  # the plain train loader's order
        dataset = _AtSizes(bundle, lambda b: b.train_dataset)
        sampler = RandomSampler(range(len(dataset)), generator=self.generator)
        self.batch_sampler = _SizedBatches(BatchSampler(sampler, bundle.batch_size, False),
                                           sorted(choices), bundle.seed)
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler,
                                 num_workers=bundle.num_workers, generator=self.generator)

    def begin_epoch(self, epoch: int, seed: int) -> None:
        self.batch_sampler.epoch, self.batch_sampler.seed = int(epoch), int(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def iter_from(self, skip: int, before_first: Callable[[], None]) -> Iterator[Any]:
        return batches_from(self.loader, skip, before_first)


class ResolutionLoader:
    """An unshuffled loader over one split of `bundle`; `at_resolution(r)` the split at r."""

    def __init__(self, bundle: DataBundle, split: Callable[[DataBundle], Dataset]):
        self.bundle, self.split = bundle, split

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bundle.loader(self.split(self.bundle), shuffle=False))

    def __len__(self) -> int:
        return len(self.bundle.loader(self.split(self.bundle), shuffle=False))

    def at_resolution(self, resolution: int) -> Iterable:
        bundle = self.bundle.at(resolution)
        return bundle.loader(self.split(bundle), shuffle=False)


class _ResolvingList(list):
    """Stacked batches with `at_resolution`: the same samples stacked at another size."""

    at_resolution: Callable[[int], Iterable]


class _Resolving:
    """Batches from a loader with `at_resolution` (they do not fit in memory)."""

    def __init__(self, batches: Iterable, at: Callable[[int], Iterable]):
        self.batches, self.at_resolution = batches, at

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def resolving(batches: Iterable, at: Callable[[int], Iterable]) -> Iterable:
    """`batches` that also answer `at_resolution(r)` with `at(r)` (cached per size)."""
    cache: dict[int, Iterable] = {}

    def at_resolution(resolution: int) -> Iterable:
        if resolution not in cache:
            cache[resolution] = at(resolution)
        return cache[resolution]

    if isinstance(batches, list):
        out = _ResolvingList(batches)
        out.at_resolution = at_resolution
        return out
    return _Resolving(batches, at_resolution)
