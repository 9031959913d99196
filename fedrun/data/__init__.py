"""Datasets as tensors: :class:`FederatedData` is what every loader returns.

A loader is any callable ``(..., num_clients, seed) -> FederatedData`` named by ``_target_`` in a
``conf/data/*.yaml`` file. Images stay as compact tensors; ``augment`` (if any) is applied to whole
training batches on the device by the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class FederatedData:
    """Training and test tensors of one dataset.

    ``groups`` gives, for data that comes federated (synthetic devices, Shakespeare roles), the
    natural client of each training sample (used by ``partition=natural``). ``test_groups`` does the
    same for the test split when it exists.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    groups: Optional[torch.Tensor] = None
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "FederatedData":
        for name in ("x_train", "y_train", "x_test", "y_test", "groups"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self
