"""Model zoo. Each model is a plain ``nn.Module`` built from ``(input_shape, num_classes, ...)``.

Models hold parameters only (no BatchNorm buffers), as in the FedDyn paper, so that they can be run
as functions of one flat vector (:mod:`fedrun.params`). Parameter counts of the paper's models are
asserted in the tests.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression ``x ↦ xW + b`` (the paper's synthetic-data model).

    ``zero_init`` starts from W = 0, b = 0 as the reference code does for the synthetic problem.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, zero_init: bool = True):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network: 784-200-200-10 for MNIST, 784-100-100-10 for EMNIST-L."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)):
        super().__init__()
        sizes = [math.prod(input_shape), *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
