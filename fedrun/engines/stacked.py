"""Forward passes of A client models at once, over parameters stacked along a client axis.

``stacked[name]`` has shape ``[A, *param_shape]`` (views of one ``[A, P]`` tensor) and inputs have
shape ``[A, B, ...]``; the output is ``[A, B, num_classes]``. Two implementations:

- :func:`batched_forward`: hand-batched for chains of ``Conv2d`` / ``MaxPool2d`` / ``Flatten`` /
  ``Linear`` / ``ReLU`` (the logistic regression, the MLPs and the CIFAR CNN). Linear layers are
  batched matmuls (``baddbmm``); convolutions are one grouped convolution over all clients (the A
  clients' C channels side by side, ``groups=A``), which is what ``vmap`` turns a convolution into,
  without vmap's per-operation dispatch. Chains without convolutions also have an explicit backward
  (:meth:`LayerChain.ce_grad`), the fastest path on CPU, where per-operation overhead dominates;
- a model's own ``stacked_forward(params, x)`` method, when it has one (the GroupNorm ResNet-18:
  grouped convolutions and one ``group_norm`` over all clients);
- :func:`vmap_forward`: any parameter-only module through ``torch.func.vmap`` over
  ``functional_call``.

Both are differentiable with ordinary autograd, so one backward of the sum of the clients'
(independent) losses yields every client's gradient in its own row. :func:`agrees` checks a stacked
forward against the module itself; where vmap cannot run a module (torch's fused RNN kernels have
no batching rule) it says no and the engine falls back to the sequential one.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedrun.models.params import FlatModel

StackedForward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def unflatten_stacked(model: FlatModel, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``w`` [A, P] shaped ``[A, *shape]`` per parameter of ``model``."""
    out, start = {}, 0
    count = w.shape[0]
    for name, shape, n in zip(model.names, model.shapes, model.numels):
        out[name] = w[:, start : start + n].view(count, *shape)
        start += n
    return out


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _chain(module: nn.Module, prefix: str = "") -> Optional[list[tuple]]:
    """The module as a list of ops, or None when it is not a plain layer chain.

    Ops: ``("flatten",)``, ``("linear", weight, bias)``, ``("relu",)``,
    ``("conv", weight, bias, stride, padding)`` and ``("maxpool", kernel, stride)``.
    """
    from fedrun.models import CNN, MLP, LogisticRegression

    if type(module) is LogisticRegression:
        return [("flatten",), ("linear", f"{prefix}fc.weight", f"{prefix}fc.bias")]
    if type(module) in (MLP, CNN):
        return _chain(module.net, f"{prefix}net.")
    if type(module) is not nn.Sequential:
        return None
    ops: list[tuple] = []
    for name, child in module.named_children():
        kind = type(child)
        if kind is nn.Flatten and child.start_dim == 1 and child.end_dim == -1:
            ops.append(("flatten",))
        elif kind is nn.Linear:
            ops.append(("linear", f"{prefix}{name}.weight", f"{prefix}{name}.bias"))
        elif kind is nn.ReLU:
            ops.append(("relu",))
        elif (
            kind is nn.Conv2d and child.groups == 1 and _pair(child.dilation) == (1, 1) and child.bias is not None
            and child.padding_mode == "zeros" and not isinstance(child.padding, str)
        ):
            ops.append(("conv", f"{prefix}{name}.weight", f"{prefix}{name}.bias", _pair(child.stride), _pair(child.padding)))
        elif (
            kind is nn.MaxPool2d and _pair(child.padding) == (0, 0) and _pair(child.dilation) == (1, 1)
            and not child.ceil_mode and not child.return_indices
        ):
            ops.append(("maxpool", _pair(child.kernel_size), _pair(child.stride or child.kernel_size)))
        else:
            return None
    return ops


class LayerChain:
    """Hand-batched layer chain over stacked parameters.

    ``forward(params, x)`` with ``x`` [A, B, ...] is differentiable with autograd. Convolutions run
    on ``[B, A*C, H, W]`` (each client's channels side by side) as one grouped convolution, and the
    features go back to ``[A, B, F]`` at the ``Flatten``. For chains without convolutions
    (:attr:`explicit`), :meth:`ce_grad` returns each client's mean cross-entropy over its real
    samples and its gradient without building an autograd graph (softmax minus one-hot, then batched
    matmuls back through the layers), which removes most of the per-step overhead that dominates
    small models on a CPU.
    """

    def __init__(self, ops: list[tuple]):
        self.ops = ops
        self.explicit = all(op[0] in ("flatten", "linear", "relu") for op in ops)
        self.has_conv = any(op[0] == "conv" for op in ops)

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        count, batch = x.shape[0], x.shape[1]
        h, spatial = x, False  # spatial: h is [B, A*C, H, W], else [A, B, ...]
        for op in self.ops:
            if op[0] == "conv":
                if not spatial:
                    h = h.transpose(0, 1).reshape(batch, count * h.shape[2], *h.shape[3:])
                    spatial = True
                weight, bias = params[op[1]], params[op[2]]
                h = F.conv2d(
                    h, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), op[3], op[4], groups=count
                )
            elif op[0] == "maxpool":
                h = F.max_pool2d(h, op[1], op[2])
            elif op[0] == "flatten":
                if spatial:
                    h = h.reshape(batch, count, -1).transpose(0, 1)
                    spatial = False
                else:
                    h = h.reshape(count, batch, -1)
            elif op[0] == "linear":
                h = torch.baddbmm(params[op[2]].unsqueeze(1), h, params[op[1]].transpose(1, 2))
            else:
                h = torch.relu(h)
        return h

    def ce_grad(
        self, model: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(client CE [A], gradient [A, P]) of ``sum_b weights[a, b] * CE(f(w[a], x[a, b]), y[a, b])``.

        Pure (new tensors, no buffers): the form for autocast and ``torch.compile``. The training
        loop's float32 path runs :class:`ChainGrad`, the same kernels writing into buffers made once
        (tests check the two are bit for bit equal).
        """
        if not self.explicit:
            raise ValueError("ce_grad needs a chain of Flatten/Linear/ReLU layers")
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


class ChainGrad:
    """The explicit gradient of a Flatten/Linear/ReLU chain at stacked parameters ``w`` [A, P].

    Bound to ``w`` once (a chunk's parameter buffer, updated in place by the caller between calls):
    the parameter views, the gradient buffers (one per parameter and ``grad`` [A, P]) and the
    constant of the one-hot are made here, so a call runs only arithmetic, most kernels writing
    into place. Per call, for a chain of L linear layers: L ``baddbmm`` forward, ``log_softmax``,
    the loss (gather, multiply, sum), softmax − one-hot (``exp_``, ``scatter_add_``, multiply by the
    sample weights), per layer one ``bmm`` and one ``sum`` plus, below the top, one ``bmm`` back and
    ``threshold_backward`` through the ReLU, and one ``cat`` into ``grad``: 14 kernels for the
    logistic regression, 24 for a two-hidden-layer MLP.
    """

    def __init__(self, chain: LayerChain, model: FlatModel, w: torch.Tensor, batch: int):
        if not chain.explicit:
            raise ValueError("ChainGrad needs a chain of Flatten/Linear/ReLU layers")
        count = w.shape[0]
        self.grad = torch.empty_like(w)
        params = unflatten_stacked(model, w)
        # Each layer's gradient goes into its own contiguous buffer (a bmm writing into a strided
        # view of ``grad`` can take another kernel, with other round-off), then one cat into ``grad``.
        grads = {name: torch.empty_like(p) for name, p in params.items()}
        self.flat_grads = [grads[name].view(count, -1) for name in model.names]
        # (weight [A, out, in], its transpose, bias [A, 1, out], weight and bias gradient buffers)
        self.layers: list[tuple[torch.Tensor, ...]] = []
        self.relu: list[bool] = []  # a ReLU after linear layer k
        self.input_relu = False  # a ReLU before the first linear layer (no gradient flows there)
        for op in chain.ops:
            if op[0] == "relu":
                if self.layers:
                    self.relu[-1] = True
                else:
                    self.input_relu = True
            elif op[0] == "linear":
                weight, bias = params[op[1]], params[op[2]]
                self.layers.append((weight, weight.transpose(1, 2), bias.unsqueeze(1), grads[op[1]], grads[op[2]]))
                self.relu.append(False)
        first_linear = next(i for i, op in enumerate(chain.ops) if op[0] == "linear")
        self.flatten_first = any(op[0] == "flatten" for op in chain.ops[:first_linear])
        self.minus_one = torch.full((count, batch, 1), -1.0, dtype=w.dtype, device=w.device)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, weights3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(minus each client's CE [A], gradient [A, P] in :attr:`grad`) on the batch ``x`` [A, B, ...]
        with labels ``y`` [A, B, 1] and sample weights ``weights`` [A, B] (``weights3``: [A, B, 1])."""
        if self.flatten_first and x.dim() != 3:
            x = x.reshape(x.shape[0], x.shape[1], -1)
        if self.input_relu:
            x = torch.relu(x)
        cast = torch.is_autocast_enabled(x.device.type)  # bfloat16: kernels cannot write into float32
        saved = [x]
        h = x
        for k, (_, weight_t, bias, _, _) in enumerate(self.layers):
            h = torch.baddbmm(bias, h, weight_t)
            if self.relu[k]:
                h = h.relu_()
            saved.append(h)  # the input of layer k + 1
        logp = torch.log_softmax(h, dim=-1)
        neg_ce = (logp.gather(-1, y).squeeze(-1) * weights).sum(1)
        if cast:  # bfloat16 logits: the weights promote d to float32, as in autograd's path
            d = logp.exp_().scatter_add_(-1, y, self.minus_one.to(logp.dtype)) * weights3
        else:
            d = logp.exp_().scatter_add_(-1, y, self.minus_one).mul_(weights3)
        for k in range(len(self.layers) - 1, -1, -1):
            weight, _, _, grad_w, grad_b = self.layers[k]
            if cast:
                grad_w.copy_(torch.bmm(d.transpose(1, 2), saved[k]))
                grad_b.copy_(d.sum(1))
            else:
                torch.bmm(d.transpose(1, 2), saved[k], out=grad_w)
                torch.sum(d, 1, out=grad_b)
            if k > 0:
                d = torch.bmm(d, weight)
                if self.relu[k - 1]:
                    d = torch.ops.aten.threshold_backward(d, saved[k], 0)
        return neg_ce, torch.cat(self.flat_grads, dim=1, out=self.grad)


def batched_forward(module: nn.Module) -> Optional[StackedForward]:
    """A hand-batched stacked forward: the module's own ``stacked_forward(params, x)`` if it has one
    (:class:`fedrun.models.resnet.ResNet18GN`), a :class:`LayerChain` for plain layer chains (see
    :func:`_chain`), or None.

    The caller should confirm it against the module (:func:`agrees`) before trusting it.
    """
    own = getattr(module, "stacked_forward", None)
    if callable(own):
        return own
    ops = _chain(module)
    if ops is None or not any(op[0] == "linear" for op in ops):
        return None
    return LayerChain(ops)


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
