"""Models as functions of one flat float32 parameter vector.

fedrun keeps every model as a flat vector θ (the order of ``named_parameters``), like the FedDyn
reference code: server models, client models and per-client state are rows of plain tensors, and
algorithms are written as vector arithmetic. :class:`FlatModel` runs the wrapped ``nn.Module`` with
the parameters taken as views of such a vector, so autograd returns the gradient as one vector too.
The same call works with ``torch.func.vmap`` over a stack of vectors (the vectorised engine).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call


class FlatModel:
    """Wraps a parameter-only ``nn.Module`` (no buffers) as ``f(theta, x)``."""

    def __init__(self, module: nn.Module):
        buffers = [name for name, _ in module.named_buffers()]
        if buffers:
            raise ValueError(f"fedrun models must not hold buffers (found {buffers}); use parameters only")
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [math.prod(s) for s in self.shapes]
        self.num_params = sum(self.numels)

    def to(self, device: torch.device) -> "FlatModel":
        self.module.to(device)
        return self

    def initial_vector(self) -> torch.Tensor:
        """The module's current parameters as one flat float32 vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).float().clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` (shape [P]) shaped like the module's parameters."""
        out, start = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            out[name] = theta[start : start + n].view(shape)
            start += n
        return out

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(theta), (x,))
