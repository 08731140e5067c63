"""Plain supervised training and evaluation for image classifiers (used by quickstart and prune)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nasbench.progress import track


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


def adam_train_fn(epoch_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                  per_epoch: int, lr: float = 1e-3) -> Callable[[nn.Module, Any, Callable], None]:
    """A pruners `train_fn(model, span, on_step)`: Adam on cross-entropy for `span`.

    `epoch_batches()` is iterated again until the span is done: a DataLoader (one epoch per
    pass) or a generator that never ends (seeded shuffling of in-memory tensors).
    """

    def train(model: nn.Module, span: Any, on_step: Callable[[int, float], None]) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        total = span.value if span.unit == "it" else span.value * per_epoch
        it = 0
        model.train()
        while it < total:
            for x, y in epoch_batches():
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                it += 1
                on_step(it, it / per_epoch)
                if it >= total:
                    break
        model.eval()

    return train
