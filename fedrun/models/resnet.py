"""ResNet-18 with GroupNorm: the CIFAR model of FL-Simulator (woodenchild95/FL-Simulator, ``models.py``).

FL-Simulator's ``ResNet18`` is torchvision's ``resnet18`` with every BatchNorm replaced by
``GroupNorm(2, C)`` and a new ``Linear(512, classes)`` head. It keeps torchvision's ImageNet stem
(7×7 conv, stride 2, padding 3, then 3×3 max-pool, stride 2) on 32×32 CIFAR images, so the four
stages see 8×8, 4×4, 2×2 and 1×1 maps; ``stem="imagenet"`` (the default) is that model.
``stem="cifar"`` is the usual CIFAR variant instead (3×3 conv, stride 1, no max-pool), which is not
FL-Simulator's. Initialisation as torchvision's: convolutions Kaiming-normal (fan-out, ReLU),
GroupNorm weight 1 and bias 0, the head PyTorch's default ``Linear`` init.

No buffers (GroupNorm keeps no running statistics), so the model runs as a function of one flat
vector (:class:`fedrun.models.params.FlatModel`) and under ``torch.func.vmap``. :meth:`ResNet18GN.stacked_forward`
is a hand-batched forward of A clients' models at once for the vectorised engine: the clients'
channels side by side, every convolution one grouped convolution (``groups=A``) and every GroupNorm
one ``group_norm`` with ``A * groups`` groups (groups are contiguous channel blocks, so client a's
groups are exactly its own channels).

Parameters (``width=64``, either stem's count differs only in the first conv): 11,181,642 for 10
classes and 11,227,812 for 100 with the ImageNet stem; 7,680 fewer with the CIFAR stem (the
derivation is in ``tests/test_resnet.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STEMS = ("imagenet", "cifar")


class BasicBlock(nn.Module):
    """Two 3×3 convs with GroupNorm, ReLU and an identity (or 1×1 conv + GroupNorm) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + skip)


class ResNet18GN(nn.Module):
    """ResNet-18 (four stages of two :class:`BasicBlock`, widths w, 2w, 4w, 8w) with GroupNorm.

    ``groups``: GroupNorm groups in every layer (FL-Simulator: 2); ``stem``: ``imagenet`` (FL-Simulator,
    torchvision's 7×7/2 conv + 3×3/2 max-pool) or ``cifar`` (3×3/1 conv, no pool); ``width``: channels
    of the first stage (64 in ResNet-18; smaller only for tests).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, groups: int = 2, stem: str = "imagenet", width: int = 64):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model=resnet18_gn needs image inputs [C, H, W], got shape {tuple(input_shape)}")
        if stem not in STEMS:
            raise ValueError(f"model.stem={stem} is unknown: use one of {', '.join(STEMS)}")
        if width < 1 or groups < 1 or width % groups:
            raise ValueError(f"model.width={width} must be a positive multiple of model.groups={groups}")
        self.groups, self.stem_kind = groups, stem
        k, s, p = (7, 2, 3) if stem == "imagenet" else (3, 1, 1)
        self.conv1 = nn.Conv2d(input_shape[0], width, k, s, p, bias=False)
        self.norm1 = nn.GroupNorm(groups, width)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else None
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin, stages = width, []
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride, groups), BasicBlock(cout, cout, 1, groups)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.norm1(self.conv1(x)))
        if self.pool is not None:
            h = self.pool(h)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean(dim=(2, 3)))

    # -- A clients at once -------------------------------------------------------------------------
    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``[A, B, classes]`` of A models (``params[name]``: ``[A, *shape]``) on ``x`` [A, B, C, H, W]."""
        count, batch = x.shape[0], x.shape[1]
        h = x.transpose(0, 1).reshape(batch, count * x.shape[2], *x.shape[3:])  # [B, A*C, H, W]
        h = torch.relu(self._norm(params, "norm1", self._conv(params, "conv1", h, count, self.conv1), count))
        if self.pool is not None:
            h = F.max_pool2d(h, 3, 2, 1)
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, block in enumerate(getattr(self, stage)):
                h = self._block(params, f"{stage}.{i}.", block, h, count)
        feats = h.mean(dim=(2, 3)).reshape(batch, count, -1).transpose(0, 1)  # [A, B, F]
        return torch.baddbmm(params["fc.bias"].unsqueeze(1), feats, params["fc.weight"].transpose(1, 2))

    def _block(self, params: dict[str, torch.Tensor], pre: str, block: BasicBlock, h: torch.Tensor, count: int) -> torch.Tensor:
        out = torch.relu(self._norm(params, pre + "norm1", self._conv(params, pre + "conv1", h, count, block.conv1), count))
        out = self._norm(params, pre + "norm2", self._conv(params, pre + "conv2", out, count, block.conv2), count)
        if block.shortcut is not None:
            h = self._norm(params, pre + "shortcut.1", self._conv(params, pre + "shortcut.0", h, count, block.shortcut[0]), count)
        return torch.relu(out + h)

    @staticmethod
    def _conv(params: dict[str, torch.Tensor], name: str, h: torch.Tensor, count: int, conv: nn.Conv2d) -> torch.Tensor:
        weight = params[name + ".weight"]
        return F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), None, conv.stride, conv.padding, groups=count)

    def _norm(self, params: dict[str, torch.Tensor], name: str, h: torch.Tensor, count: int) -> torch.Tensor:
        return F.group_norm(h, count * self.groups, params[name + ".weight"].reshape(-1), params[name + ".bias"].reshape(-1))
