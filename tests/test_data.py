"""Datasets: deterministic splits, requested resolution/channels, clear errors for missing data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasbench.data import list_datasets, load_dataset
from nasbench_core.errors import DataError


@pytest.mark.parametrize("name, n_total", [("digits", 1797), ("mnist5k", 5000), ("synthetic", 2000)])
def test_shipped_datasets_shapes_and_split(name, n_total):
    bundle = load_dataset(name=name, resolution=12, channels=3, val_fraction=0.25, seed=1)
    x, y = next(iter(bundle.train_loader))
    assert x.shape[1:] == (3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(bundle.train_dataset) + len(bundle.val_dataset) == n_total
    assert len(bundle.val_dataset) == round(0.25 * n_total)
    assert bundle.num_classes == 10 and bundle.in_chans == 3 and bundle.resolution == 12
    train_x = bundle.train_dataset.tensors[0]
    assert abs(float(train_x.mean())) < 0.05 and abs(float(train_x.std()) - 1) < 0.05


def test_split_is_deterministic_and_seeded():
    a, b = load_dataset(name="digits", seed=7), load_dataset(name="digits", seed=7)
    c = load_dataset(name="digits", seed=8)
    assert torch.equal(a.val_dataset.tensors[1], b.val_dataset.tensors[1])
    assert not torch.equal(a.val_dataset.tensors[1], c.val_dataset.tensors[1])
    first_a = next(iter(a.train_loader))[1]
    first_b = next(iter(b.train_loader))[1]
    assert torch.equal(first_a, first_b)


def test_native_resolution_and_limit():
    bundle = load_dataset(name="mnist5k", limit=100)
    assert bundle.resolution == 28 and bundle.in_chans == 1 and len(bundle.train_dataset) == 100


def test_synthetic_is_learnable_not_noise():
    from sklearn.linear_model import LogisticRegression

    bundle = load_dataset(name="synthetic", seed=0)
    xtr, ytr = (t.numpy() for t in bundle.train_dataset.tensors)
    xva, yva = (t.numpy() for t in bundle.val_dataset.tensors)
    clf = LogisticRegression(max_iter=300).fit(xtr.reshape(len(xtr), -1), ytr)
    accuracy = clf.score(xva.reshape(len(xva), -1), yva)
    assert accuracy > 0.6  # chance is 0.1
    shuffled = clf.fit(xtr.reshape(len(xtr), -1), np.random.default_rng(0).permutation(ytr))
    assert shuffled.score(xva.reshape(len(xva), -1), yva) < 0.3


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bundle = load_dataset(name="imagefolder", root=tmp_path, resolution=16)
    x, y = next(iter(bundle.train_loader))
    assert x.shape == (6, 3, 16, 16) and bundle.num_classes == 2 and len(bundle.val_dataset) == 6


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DataError, match="train"):
        load_dataset(name="imagefolder", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashionmnist"])
def test_torchvision_missing_says_how_to_get_it(name, tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(name=name, root=tmp_path)
    with pytest.raises(DataError, match="data.root"):
        load_dataset(name=name)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DataError, match="'name'.*digits"):
        load_dataset(name="imagenet22k")
    assert {"digits", "mnist5k", "synthetic", "imagefolder"} <= set(list_datasets())
