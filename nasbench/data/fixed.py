"""One fixed, seeded subset of samples per run for BN recalibration and validation.

Why: a supernet's top1 for an arch depends on which batches recalibrate its BN statistics.
Drawing them from a shuffled loader made an arch's accuracy depend on what was evaluated
before it (the same arch spread by 1.4-2.2 points, a resume changed 8 of 10 new results and
`export` disagreed with the table). OFA recalibrates on one fixed subset; so do we: the subset
is drawn once, stored in the run as indices, and every measurement — in any process, after a
resume, and in `export` — uses exactly these samples, batched the same way, unaugmented.
With `train.resolution_mode: data` the batches also answer `at_resolution(r)`: these samples
loaded at r from their source (`DataBundle.at`), which is what an arch at r is measured on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from nasbench.data.bundle import DataBundle
from nasbench_core.atomic import atomic_write_text
from nasbench_core.errors import RunError
from nasbench_core.seeding import torch_generator

Batch = tuple[torch.Tensor, torch.Tensor]
FILE = "calibration.json"
IN_MEMORY_BYTES = 512 * 2**20


@dataclass(frozen=True)
class FixedSubset:
    """Indices into the (unaugmented) train set for BN recalibration and into the val set for
    accuracy, and the batch size both are cut into."""

    calib: tuple[int, ...]
    val: tuple[int, ...]
    batch_size: int

    @classmethod
    def draw(cls, bundle: DataBundle, *, bn_batches: int, val_batches: int | None,
             seed: int) -> FixedSubset:
        """A seeded random `bn_batches` batches of train samples; the first `val_batches`
        batches of the (unshuffled) val set, or all of it."""
        size = bundle.batch_size
        n_train, n_val = len(bundle.calibration_dataset), len(bundle.val_dataset)
        perm = torch.randperm(n_train, generator=torch_generator(seed))
        calib = perm[: min(n_train, bn_batches * size)].tolist()
        val = list(range(n_val if val_batches is None else min(n_val, val_batches * size)))
        return cls(tuple(calib), tuple(val), size)

    @property
    def id(self) -> str:
        """Short hash of the subset: results measured on different subsets carry different ids."""
        text = json.dumps({"calib": self.calib, "val": self.val, "batch_size": self.batch_size})
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def calib_batches(self, bundle: DataBundle) -> list[Batch]:
        """Stacked once, in memory: every arch's recalibration reuses them."""
        batches = _stacked(bundle.calibration_dataset, self.calib, self.batch_size)
        return self._resolving(batches, bundle, self.calib_batches)  # type: ignore[return-value]

    def val_batches(self, bundle: DataBundle) -> Iterable[Batch]:
        """Stacked in memory when they fit `IN_MEMORY_BYTES`, else a loader that reads them in
        the same order on every pass (ImageNet's val set does not fit)."""
        dataset = bundle.val_dataset
        if not self.val or len(self.val) * _sample_bytes(dataset) <= IN_MEMORY_BYTES:
            batches: Iterable[Batch] = _stacked(dataset, self.val, self.batch_size)
        else:
            batches = bundle.loader(Subset(dataset, list(self.val)), shuffle=False)
        return self._resolving(batches, bundle, self.val_batches)

    @staticmethod
    def _resolving(batches: Iterable[Batch], bundle: DataBundle,
                   again: Callable[[DataBundle], Iterable[Batch]]) -> Iterable[Batch]:
        """In data mode, `batches` that also give the same samples loaded at another size."""
        if bundle.resolution_mode != "data":
            return batches
        from nasbench.data.resample import resolving

        return resolving(batches, lambda r: again(bundle.at(r)))

    def loaders(self, bundle: DataBundle) -> tuple[list[Batch], Iterable[Batch]]:
        """(calibration batches, validation batches) of `bundle`, after checking the subset's
        indices still fit its datasets (a changed dataset must not silently shift them)."""
        for name, indices, dataset in (("calibration", self.calib, bundle.calibration_dataset),
                                       ("validation", self.val, bundle.val_dataset)):
            if indices and max(indices) >= len(dataset):
                raise RunError(f"the run's fixed {name} subset indexes sample {max(indices)} but "
                               f"the dataset has {len(dataset)}; the data changed since the run "
                               "began")
        return self.calib_batches(bundle), self.val_batches(bundle)

    # -- storage in a run --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "batch_size": self.batch_size, "calib": list(self.calib),
                "val": list(self.val)}

    @classmethod
    def read(cls, run_dir: Path) -> FixedSubset:
        path = Path(run_dir) / FILE
        try:
            doc = json.loads(path.read_text())
            subset = cls(tuple(int(i) for i in doc["calib"]), tuple(int(i) for i in doc["val"]),
                         int(doc["batch_size"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{path} is missing or unreadable ({exc}); the run has no fixed "
                           "calibration subset") from None
        if doc.get("id") != subset.id:
            raise RunError(f"{path} was edited: its id {doc.get('id')!r} does not match its indices")
        return subset

    @classmethod
    def for_run(cls, run_dir: Path, bundle: DataBundle, *, bn_batches: int,
                val_batches: int | None, seed: int) -> FixedSubset:
        """The run's stored subset; a run without one (a new run) draws it and stores it first,
        so a resume, another process or `export` reads back the very same samples."""
        path = Path(run_dir) / FILE
        subset = cls.draw(bundle, bn_batches=bn_batches, val_batches=val_batches, seed=seed)
        if not path.exists():
            atomic_write_text(path, json.dumps(subset.to_dict()))
            return subset
        return cls.stored_as(run_dir, subset)

    @classmethod
    def stored_as(cls, run_dir: Path, subset: FixedSubset) -> FixedSubset:
        """The run's stored subset, refused in one line unless it is `subset` (what this
        config and data draw): a resume measures accuracy on the samples the run did."""
        path = Path(run_dir) / FILE
        stored = cls.read(run_dir)
        if stored != subset:
            raise RunError(
                f"{path} holds {len(stored.calib)} calibration and {len(stored.val)} validation "
                f"samples in batches of {stored.batch_size}; this config and data give "
                f"{len(subset.calib)}, {len(subset.val)} and {subset.batch_size}"
                + (" (other samples)" if (len(stored.calib), len(stored.val), stored.batch_size)
                   == (len(subset.calib), len(subset.val), subset.batch_size) else "")
                + ": keep the run's evaluation settings, batch size, seed and data")
        return stored


def _sample_bytes(dataset: Dataset) -> int:
    return int(torch.as_tensor(dataset[0][0]).nbytes)


def _stacked(dataset: Dataset, indices: tuple[int, ...], batch_size: int) -> list[Batch]:
    """The samples at `indices`, in that order, stacked into batches."""
    out = []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
        out.append((x, y))
    return out
