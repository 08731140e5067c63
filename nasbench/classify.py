"""Plain supervised training and evaluation for image classifiers (used by quickstart and prune)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nasbench.progress import track
from nasbench_core.seeding import torch_generator


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy as a fraction in [0, 1] (as everywhere in nasbench); keeps train/eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """SGD with momentum and a cosine schedule; `after_step` lets pruners re-apply masks."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in track(range(epochs), "training", total=epochs):
        running, batches = 0.0, 0
        for images, labels in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            running += float(loss.detach())
            batches += 1
        if on_epoch is not None:
            on_epoch(epoch, running / max(batches, 1))


def shuffled_batches(dataset: Dataset, batch_size: int, seed: int,
                     num_workers: int = 0) -> Callable[[int, int], Iterable[Any]]:
    """`batches(epoch, start)`: epoch `epoch`'s batches from batch `start` on, in a permutation
    seeded by (seed, epoch) alone. The data a step sees then depends on the step, not on what
    trained before it: a lottery level rewound to step k sees the batches the dense run saw
    from k, and a resumed run the batches an uninterrupted one would have."""

    def batches(epoch: int, start: int) -> DataLoader:
        gen = torch_generator(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        order = torch.randperm(len(dataset), generator=gen)[start * batch_size:]  # type: ignore[arg-type]
        return DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size,
                          num_workers=num_workers)

    return batches


def adam_train_fn(epoch_batches: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                  per_epoch: int, lr: float = 1e-3, lr_lambda: Callable[[int], float] | None = None,
                  ) -> Callable[[nn.Module, Any, Any, Callable], None]:
    """A pruners `train_fn(model, start, end, on_step)`: Adam on cross-entropy from schedule
    position `start` to `end` (`pruners.Span`s), a fresh optimizer per call.

    `epoch_batches(epoch, start)` gives an epoch's batches from batch `start` on (see
    `shuffled_batches`); `lr_lambda(step)` scales `lr` at absolute step `step` (as torch's
    LambdaLR), so a schedule continues where a lottery level's rewind point left it.
    """

    def train(model: nn.Module, start: Any, end: Any, on_step: Callable[[int, float], None]) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        step, last = start.steps(per_epoch), end.steps(per_epoch)
        model.train()
        while step < last:
            epoch, offset = divmod(step, per_epoch)
            before = step
            for x, y in epoch_batches(epoch, offset):
                if lr_lambda is not None:
                    for group in opt.param_groups:
                        group["lr"] = lr * lr_lambda(step)
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                step += 1
                on_step(step, step / per_epoch)
                if step >= last or step % per_epoch == 0:
                    break
            if step == before:
                raise ValueError(f"epoch {epoch} has no batch from {offset} on: "
                                 f"per_epoch={per_epoch} is more than it has")
        model.eval()

    return train
