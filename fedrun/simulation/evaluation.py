"""Test loss and accuracy of a flat model on a split, in large no-grad batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedrun.models.params import FlatModel


@torch.no_grad()
def evaluate(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``theta`` on ``(x, y)``."""
    loss = torch.zeros((), dtype=torch.float64, device=theta.device)
    correct = torch.zeros((), dtype=torch.long, device=theta.device)
    for start in range(0, len(y), batch_size):
        logits = model(theta, x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += F.cross_entropy(logits.float(), target, reduction="sum").double()
        correct += (logits.argmax(-1) == target).sum()
    n = max(len(y), 1)
    return float(loss) / n, float(correct) / n
