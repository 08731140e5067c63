"""Resuming mid-epoch: an epoch's batches after its first `skip`, the skipped ones never loaded.

A checkpoint taken k steps into an epoch holds the RNG state of the epoch's start (which fixes
the epoch's shuffle) and k. On resume the loop sets the loader's generators back to that start,
re-draws the epoch's order here and drops its first k batches as index lists: their samples are
never read or augmented. `before_first` runs right before the first kept batch is loaded; the
loop restores the global RNG there, so augmentation goes on as in the uninterrupted run
(exactly so with `num_workers=0`; worker processes seed themselves per batch position).

A loader wrapper (progress bar, per-epoch sampler) takes part by defining
`iter_from(skip, before_first)`, usually by calling `batches_from` on the loader it wraps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, Sampler


def batches_from(loader: Iterable, skip: int, before_first: Callable[[], None]) -> Iterator[Any]:
    """One pass of `loader` without its first `skip` batches (see the module doc)."""
    iter_from = getattr(loader, "iter_from", None)
    if callable(iter_from):
        return iter_from(skip, before_first)
    if (isinstance(loader, DataLoader) and loader.batch_sampler is not None
            and not isinstance(loader.dataset, IterableDataset)):
        return iter(_skipping_loader(loader, skip, before_first))
    batches = iter(loader)  # no index level to skip at: load and drop
    for _ in islice(batches, skip):
        pass
    before_first()
    return batches


class _SkipBatches(Sampler):
    """A batch sampler's index lists after the first `skip`; `before_first` runs before the
    first kept list is handed out (so before its samples are loaded)."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int,
                 before_first: Callable[[], None]):
        self.batch_sampler, self.skip, self.before_first = batch_sampler, skip, before_first

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.batch_sampler)
        for _ in islice(indices, self.skip):
            pass
        self.before_first()
        yield from indices


def _skipping_loader(loader: DataLoader, skip: int, before_first: Callable[[], None]) -> DataLoader:
    """`loader` with its batch sampler wrapped in `_SkipBatches`; it shares the generator, so
    the pass draws its worker seed and its order from the same state as the original's."""
    return DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip, before_first),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
    )
