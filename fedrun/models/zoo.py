"""Model zoo. Each model is a plain ``nn.Module`` built from ``(input_shape, num_classes, ...)``.

Models hold parameters only (no BatchNorm buffers), as in the FedDyn paper, so that they can be run
as functions of one flat vector (:mod:`fedrun.models.params`). Parameter counts of the paper's models are
asserted in the tests.
"""

from __future__ import annotations

import math
from typing import Annotated, Sequence

import torch
from torch import nn

from fedrun.config.bounds import AT_LEAST_1, WIDTHS


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


def dense_layers(sizes: Sequence[int]) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes`` with a ReLU after all but the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


class MLP(nn.Module):
    """Fully connected ReLU network: 784-200-200-10 for MNIST, 784-100-100-10 for EMNIST-L."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Annotated[Sequence[int], WIDTHS] = (200, 200)):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), *dense_layers([math.prod(input_shape), *hidden, num_classes]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """The paper's CIFAR CNN: conv5x5(C→64) ReLU pool2, conv5x5(64→64) ReLU pool2, FC →384→192→classes.

    No padding, so a 3×32×32 input gives 64×5×5 = 1600 features: 797,962 parameters for 10 classes,
    815,332 for 100 (docs/paper.md). Other input sizes work; the first FC width follows the input.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Annotated[Sequence[int], WIDTHS] = (64, 64),
        hidden: Annotated[Sequence[int], WIDTHS] = (384, 192),
        kernel_size: Annotated[int, AT_LEAST_1] = 5,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model=cnn needs image inputs [C, H, W], got shape {tuple(input_shape)}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise ValueError(f"model=cnn: input {tuple(input_shape)} is too small for {len(channels)} conv+pool stages")
        self.net = nn.Sequential(*layers, nn.Flatten(), *dense_layers([c * h * w, *hidden, num_classes]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _is_batched(t: torch.Tensor) -> bool:
    """True inside ``torch.func.vmap`` (a batched tensor), where the fused LSTM kernel has no batching rule."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(t))
    except AttributeError:  # pragma: no cover - very old or very new torch
        return False


class CharLSTM(nn.Module):
    """The paper's Shakespeare model: Embedding(vocab, 8), 2-layer LSTM(100), FC on the last step.

    Input: int64 character indices [N, T]; output: logits over ``num_classes`` next characters.
    133,520 parameters for vocab = classes = 80 (docs/paper.md). The LSTM weights are those of an
    ``nn.LSTM`` (same names, init and gate order i, f, g, o). The fused kernel is used when possible;
    inside ``torch.func.vmap`` (the vectorised engine) or with ``fused=False`` the same LSTM runs as
    explicit matrix products, which vmap can batch.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        vocab_size: Annotated[int, AT_LEAST_1] = 80,
        embed_dim: Annotated[int, AT_LEAST_1] = 8,
        hidden_size: Annotated[int, AT_LEAST_1] = 100,
        num_layers: Annotated[int, AT_LEAST_1] = 2,
        fused: bool = True,
    ):
        super().__init__()
        self.fused = fused
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def _unfused(self, h_seq: torch.Tensor) -> torch.Tensor:
        n, steps = h_seq.shape[0], h_seq.shape[1]
        size = self.lstm.hidden_size
        for layer in range(self.lstm.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            pre = h_seq @ w_ih.t() + bias  # input contribution for all steps at once
            h = h_seq.new_zeros(n, size)
            c = h_seq.new_zeros(n, size)
            outs = []
            for t in range(steps):
                gates = pre[:, t] + h @ w_hh.t()
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            h_seq = torch.stack(outs, dim=1)
        return h_seq[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x.long())
        if self.fused and not _is_batched(e) and not _is_batched(self.lstm.weight_ih_l0):
            last = self.lstm(e)[0][:, -1]
        else:
            last = self._unfused(e)
        return self.fc(last)
