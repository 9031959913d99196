"""Forward passes of A client models at once, over parameters stacked along a client axis.

``stacked[name]`` has shape ``[A, *param_shape]`` (views of one ``[A, P]`` tensor) and inputs have
shape ``[A, B, ...]``; the output is ``[A, B, num_classes]``. Two implementations:

- :func:`batched_forward`: hand-batched for chains of ``Flatten`` / ``Linear`` / ``ReLU`` (the
  logistic regression and the MLPs) as batched matmuls (``baddbmm``): the fastest on CPU, where the
  per-operation overhead of ``vmap`` dominates small models;
- :func:`vmap_forward`: any parameter-only module through ``torch.func.vmap`` over
  ``functional_call`` (convolutions become grouped convolutions).

Both are differentiable with ordinary autograd, so one backward of the sum of the clients'
(independent) losses yields every client's gradient in its own row. :func:`agrees` checks a stacked
forward against the module itself; where vmap cannot run a module (torch's fused RNN kernels have
no batching rule) it says no and the engine falls back to the sequential one.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedrun.params import FlatModel

StackedForward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def unflatten_stacked(model: FlatModel, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``w`` [A, P] shaped ``[A, *shape]`` per parameter of ``model``."""
    out, start = {}, 0
    count = w.shape[0]
    for name, shape, n in zip(model.names, model.shapes, model.numels):
        out[name] = w[:, start : start + n].view(count, *shape)
        start += n
    return out


def _chain(module: nn.Module, prefix: str = "") -> Optional[list[tuple[str, ...]]]:
    """The module as a list of ("flatten",) / ("linear", weight, bias) / ("relu",) ops, or None."""
    from fedrun.models import MLP, LogisticRegression

    if type(module) is LogisticRegression:
        return [("flatten",), ("linear", f"{prefix}fc.weight", f"{prefix}fc.bias")]
    if type(module) is MLP:
        return _chain(module.net, f"{prefix}net.")
    if type(module) is nn.Sequential:
        ops: list[tuple[str, ...]] = []
        for name, child in module.named_children():
            if type(child) is nn.Flatten and child.start_dim == 1 and child.end_dim == -1:
                ops.append(("flatten",))
            elif type(child) is nn.Linear:
                ops.append(("linear", f"{prefix}{name}.weight", f"{prefix}{name}.bias"))
            elif type(child) is nn.ReLU:
                ops.append(("relu",))
            else:
                return None
        return ops
    return None


class LinearChain:
    """Hand-batched Flatten/Linear/ReLU chain over stacked parameters, with an explicit backward.

    ``forward(params, x)`` is differentiable with autograd; :meth:`ce_grad` returns each client's
    mean cross-entropy over its real samples and its gradient without building an autograd graph
    (softmax minus one-hot, then batched matmuls back through the layers), which removes most of
    the per-step overhead that dominates small models on a CPU.
    """

    def __init__(self, ops: list[tuple[str, ...]]):
        self.ops = ops

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        count, batch = x.shape[0], x.shape[1]
        h = x
        for op in self.ops:
            if op[0] == "flatten":
                h = h.reshape(count, batch, -1)
            elif op[0] == "linear":
                h = torch.baddbmm(params[op[2]].unsqueeze(1), h, params[op[1]].transpose(1, 2))
            else:
                h = torch.relu(h)
        return h

    def ce_grad(
        self, model: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(client CE [A], gradient [A, P]) of ``sum_b weights[a, b] * CE(f(w[a], x[a, b]), y[a, b])``."""
        params = unflatten_stacked(model, w)
        count, batch = x.shape[0], x.shape[1]
        saved: list[tuple[tuple[str, ...], torch.Tensor]] = []
        h = x
        for op in self.ops:
            if op[0] == "flatten":
                h = h.reshape(count, batch, -1)
            elif op[0] == "linear":
                saved.append((op, h))
                h = torch.baddbmm(params[op[2]].unsqueeze(1), h, params[op[1]].transpose(1, 2))
            else:
                saved.append((op, h))
                h = torch.relu(h)
        logp = torch.log_softmax(h, dim=-1)
        target = y.unsqueeze(-1)
        client_ce = -(logp.gather(-1, target).squeeze(-1) * weights).sum(1)
        d = logp.exp().scatter_add_(-1, target, torch.full_like(target, -1, dtype=logp.dtype))
        d = d * weights.unsqueeze(-1)
        grads: dict[str, torch.Tensor] = {}
        first_linear = next(i for i, (op, _) in enumerate(saved) if op[0] == "linear")
        for i in range(len(saved) - 1, first_linear - 1, -1):
            op, h_in = saved[i]
            if op[0] == "linear":
                grads[op[1]] = torch.bmm(d.transpose(1, 2), h_in)
                grads[op[2]] = d.sum(1)
                if i > first_linear:
                    d = torch.bmm(d, params[op[1]])
            else:
                d = d * (h_in > 0)
        grad = torch.cat([grads[name].reshape(count, -1) for name in model.names], dim=1)
        return client_ce, grad


def batched_forward(module: nn.Module) -> Optional[LinearChain]:
    """A hand-batched stacked forward for Flatten/Linear/ReLU chains, or None for other modules.

    The caller should confirm it against the module (:func:`agrees`) before trusting it.
    """
    ops = _chain(module)
    if ops is None or not any(op[0] == "linear" for op in ops):
        return None
    return LinearChain(ops)


def vmap_forward(module: nn.Module) -> StackedForward:
    """Any parameter-only module over stacked parameters through ``torch.func.vmap``."""

    def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, params, (x,))

    return vmap(one)


def agrees(model: FlatModel, forward: StackedForward, sample: torch.Tensor, tol: float = 1e-4) -> bool:
    """Does ``forward`` over two random stacked models match the module's own output on ``sample``?"""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(2, model.num_params, generator=g) * 0.1).to(sample.device)
    x = sample.unsqueeze(0).expand(2, *sample.shape)
    with torch.no_grad():
        try:
            got = forward(unflatten_stacked(model, w), x)
        except Exception:  # no batching rule, shape errors: not runnable this way
            return False
        want = torch.stack([model(w[a], sample) for a in range(2)])
    return got.shape == want.shape and bool(torch.allclose(got, want, atol=tol, rtol=tol))
