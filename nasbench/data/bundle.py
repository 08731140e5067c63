"""Build deterministic train/val loaders for any named dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from nasbench.data import sources
from nasbench_core.errors import DataError
from nasbench_core.seeding import torch_generator


@dataclass
class DataBundle:
    """Loaders plus the facts a model needs to be built for them."""

    name: str
    train_dataset: Dataset
    val_dataset: Dataset
    num_classes: int
    in_chans: int
    resolution: int
    batch_size: int
    seed: int
    num_workers: int = 0
    plain_train_dataset: Dataset | None = None
    """The train images without augmentation (None: `train_dataset` has none): what BN
    recalibration sees, so a recalibrated subnet is the same in every process."""
    resolution_mode: str = "tensor"
    """`data`: an arch at another resolution is measured on these samples loaded at that size
    (`at`, resampled from the source images); `tensor`: on these, interpolated."""
    rebuild: Callable[[int], DataBundle] | None = field(default=None, repr=False, compare=False)
    """The same data (split, order, labels) loaded at another resolution."""
    _sizes: dict[int, DataBundle] = field(default_factory=dict, repr=False, compare=False)

    def at(self, resolution: int) -> DataBundle:
        """This data loaded at `resolution` (cached): every image resized from its source with
        antialiasing (in-memory sets) or cropped and resized from the file at that size (disk
        sets), never from this bundle's already-resized tensors."""
        if resolution == self.resolution:
            return self
        if self.rebuild is None:
            raise DataError(f"dataset {self.name!r} cannot be loaded at resolution {resolution}")
        if resolution not in self._sizes:
            self._sizes[resolution] = replace(self.rebuild(resolution),
                                              resolution_mode=self.resolution_mode)
        return self._sizes[resolution]

    def with_resolution_mode(self, mode: str) -> DataBundle:
        return replace(self, resolution_mode=mode, _sizes={})

    @property
    def calibration_dataset(self) -> Dataset:
        return self.train_dataset if self.plain_train_dataset is None else self.plain_train_dataset

    def loader(self, dataset: Dataset, *, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=torch_generator(self.seed) if shuffle else None,
            num_workers=self.num_workers,
        )

    @property
    def train_loader(self) -> DataLoader:
        return self.loader(self.train_dataset, shuffle=True)

    @property
    def val_loader(self) -> DataLoader:
        return self.loader(self.val_dataset, shuffle=False)


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch_generator(seed))
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def _adapt_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    gray = images.mean(dim=1, keepdim=True)
    return gray if channels == 1 else gray.expand(-1, channels, -1, -1).contiguous()


def _in_memory(name: str, cfg: Any, src: sources.InMemorySource) -> DataBundle:
    images, labels = src.images, src.labels
    resolution = cfg.resolution or images.shape[-1]
    channels = cfg.channels or images.shape[1]
    if images.shape[-1] != resolution:
        images = torch.nn.functional.interpolate(
            images, size=(resolution, resolution), mode="bilinear", align_corners=False,
            antialias=resolution < images.shape[-1],
        )
    images = _adapt_channels(images, channels)
    train_idx, val_idx = _split_indices(len(labels), cfg.val_fraction, cfg.seed)
    if cfg.limit:
        train_idx = train_idx[: cfg.limit]
    mean = images[train_idx].mean(dim=(0, 2, 3), keepdim=True)
    std = images[train_idx].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    images = (images - mean) / std
    return DataBundle(
        name=name,
        train_dataset=TensorDataset(images[train_idx], labels[train_idx]),
        val_dataset=TensorDataset(images[val_idx], labels[val_idx]),
        num_classes=src.num_classes,
        in_chans=channels,
        resolution=resolution,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
    )


def _transform(resolution: int, channels: int, native_channels: int, augment: bool):
    from torchvision import transforms as T

    steps: list[Any] = [T.Resize(resolution), T.CenterCrop(resolution)]
    if augment:
        steps = [T.RandomResizedCrop(resolution, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    if channels != native_channels:
        steps.append(T.Grayscale(num_output_channels=channels) if channels in (1, 3) else None)
    steps.append(T.ToTensor())
    steps.append(T.Normalize([0.5] * channels, [0.5] * channels))
    return T.Compose([s for s in steps if s is not None])


def _from_disk(name: str, cfg: Any) -> DataBundle:
    root = sources.require_root(name, cfg.root)
    plain_train: Dataset | None = None
    if name == "imagefolder":
        channels = cfg.channels or 3
        resolution = cfg.resolution or 224
        train_full = sources.imagefolder_split(root, "train", _transform(resolution, channels, 3, cfg.augment))
        plain = sources.imagefolder_split(root, "train", _transform(resolution, channels, 3, False))
        num_classes = len(train_full.classes)
        if (root / "val").is_dir():
            train_ds, plain_train = train_full, plain
            val_ds: Dataset = sources.imagefolder_split(root, "val", _transform(resolution, channels, 3, False))
        else:  # validation images never augmented
            train_idx, val_idx = _split_indices(len(train_full), cfg.val_fraction, cfg.seed)
            train_ds, val_ds = Subset(train_full, train_idx.tolist()), Subset(plain, val_idx.tolist())
            plain_train = Subset(plain, train_idx.tolist())
    else:
        _, num_classes, native_ch, native_res, _ = sources.TORCHVISION[name]
        channels = cfg.channels or native_ch
        resolution = cfg.resolution or native_res
        full = sources.torchvision_split(
            name, root, True, cfg.download, _transform(resolution, channels, native_ch, cfg.augment)
        )
        train_idx, val_idx = _split_indices(len(full), cfg.val_fraction, cfg.seed)
        plain = sources.torchvision_split(
            name, root, True, False, _transform(resolution, channels, native_ch, False)
        )
        train_ds, val_ds = Subset(full, train_idx.tolist()), Subset(plain, val_idx.tolist())
        plain_train = Subset(plain, train_idx.tolist())
    if not cfg.augment:
        plain_train = None  # the train set is already plain
    if cfg.limit:
        keep = list(range(min(cfg.limit, len(train_ds))))
        train_ds = Subset(train_ds, keep)
        plain_train = None if plain_train is None else Subset(plain_train, keep)
    return DataBundle(
        name=name, train_dataset=train_ds, val_dataset=val_ds, num_classes=num_classes,
        in_chans=channels, resolution=resolution, batch_size=cfg.batch_size, seed=cfg.seed,
        num_workers=cfg.num_workers, plain_train_dataset=plain_train,
    )


def load_dataset(cfg: Any = None, /, *, seed: int = 0, **kwargs: Any) -> DataBundle:
    """A DataBundle from a `DataConfig`, or from keywords (name=, resolution=, channels=, ...).

    `seed` drives the train/val split and the shuffling order.
    """
    from nasbench.config.loader import describe_validation_error
    from nasbench.config.sections import DataConfig

    if cfg is None:
        try:
            cfg = DataConfig.model_validate(kwargs)
        except ValidationError as exc:
            raise DataError(describe_validation_error(exc, DataConfig, "dataset options")) from None
    return _load(cfg, seed, {})


def _load(cfg: Any, seed: int, memo: dict[str, Any]) -> DataBundle:
    """The bundle of `cfg`; its `rebuild` loads it at another resolution, reusing an in-memory
    source (`memo`) rather than reading it again."""
    spec = _Spec(cfg, seed)
    if cfg.name in sources.IN_MEMORY:
        if "source" not in memo:
            memo["source"] = sources.IN_MEMORY[cfg.name](seed)
        bundle = _in_memory(cfg.name, spec, memo["source"])
    elif cfg.name in sources.TORCHVISION or cfg.name == "imagefolder":
        bundle = _from_disk(cfg.name, spec)
    else:
        raise DataError(f"unknown dataset {cfg.name!r}; known: {', '.join(sources.list_datasets())}")
    bundle.rebuild = lambda r: _load(cfg.model_copy(update={"resolution": r}), seed, memo)
    return bundle


class _Spec:
    """A DataConfig view with the seed attached (the seed lives in the run section)."""

    def __init__(self, cfg: Any, seed: int):
        self._cfg, self.seed = cfg, seed

    def __getattr__(self, item: str) -> Any:
        return getattr(self._cfg, item)
