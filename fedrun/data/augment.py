"""Training-time augmentation on whole batches of tensors, on the batch's device.

:class:`FlipCrop` is the FedDyn reference code's CIFAR augmentation: each image is mirrored left-right
with probability 1/2 and, independently, with probability 1/2 replaced by a random 32×32 window of
the image zero-padded by 4 pixels on every side (offsets uniform in 0..8 per axis). The reference pads
the *normalised* image with zeros, i.e. with the per-channel mean colour; fedrun's images are stored
normalised too, so padding with 0 here is the same operation (docs/paper.md's "4-zero-padded").

All random numbers are drawn on the CPU from the generator that is passed in (three draws per call:
flip coins, crop coins, offsets), so the result depends only on the generator's state, not on the
device or on other clients; the selection is then applied on ``x.device`` with one gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FlipCrop:
    """``augment(x, g)`` for image batches ``x`` of shape [N, C, H, W]."""

    pad: int = 4
    p_flip: float = 0.5
    p_crop: float = 0.5

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: flip flag [n] and window offset [n, 2] into the padded image (``pad`` = no crop)."""
        flip = torch.rand(n, generator=g) < self.p_flip
        crop = torch.rand(n, generator=g) < self.p_crop
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
        offsets[~crop] = self.pad
        return flip, offsets

    def apply(self, x: torch.Tensor, flip: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        flip, offsets = flip.to(dev), offsets.to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.pad == 0:
            return x
        padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
        rows = offsets[:, 0, None] + torch.arange(h, device=dev)  # [n, h]
        cols = offsets[:, 1, None] + torch.arange(w, device=dev)  # [n, w]
        return padded[
            torch.arange(n, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if x.shape[0] == 0:
            return x
        flip, offsets = self.draw(x.shape[0], g)
        return self.apply(x, flip, offsets)
