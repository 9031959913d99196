"""Test loss and accuracy of a flat model on a split, in large no-grad batches.

:func:`totals` stays on the model's device; :func:`evaluate` reads its two sums back to the host in
one transfer (one synchronisation on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedrun.models.params import FlatModel


@torch.no_grad()
def totals(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """[2] float64 on ``theta``'s device: the summed cross-entropy and the number of correct predictions."""
    loss = torch.zeros((), dtype=torch.float64, device=theta.device)
    correct = torch.zeros((), dtype=torch.long, device=theta.device)
    for start in range(0, len(y), batch_size):
        logits = model(theta, x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += F.cross_entropy(logits.float(), target, reduction="sum").double()
        correct += (logits.argmax(-1) == target).sum()
    return torch.stack([loss, correct.double()])  # a count below 2**53: exact in float64


def evaluate(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``theta`` on ``(x, y)``."""
    loss, correct = totals(model, theta, x, y, batch_size).tolist()
    n = max(len(y), 1)
    return loss / n, correct / n
