"""``engine.compile=true``: the vectorised engine's local step as one ``torch.compile`` unit.

For Flatten/Linear/ReLU chains (logistic regression, MLPs) the whole step is compiled: the explicit
gradient (:meth:`~fedrun.engines.stacked.LayerChain.ce_grad`), the algorithm's extra terms, the clip,
the weight decay, the update and the mask of clients without this step, as pure tensor code over
fixed shapes (every step of a chunk has the same ``[A, B]`` shapes; a second client count ``A``
makes it recompile once with a dynamic ``A``). Other models compile their stacked forward (autograd
then runs the compiled forward's backward). On a CUDA device both use ``mode="reduce-overhead"``
(CUDA graphs: one graph launch per step instead of one launch per kernel); on a CPU the default mode.

Compiled numbers are not bit for bit the eager ones: inductor fuses the elementwise work and
reorders reductions. A test bounds the difference after a round; ``engine.compile=false`` (the
default) is the exact path. On a CPU it measured slower for a whole default run once its compile
time is counted (docs/performance.md), so it stays an option.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch

from fedrun.engines.base import LocalTraining, sgd_step
from fedrun.engines.stacked import LayerChain, StackedForward
from fedrun.models.params import FlatModel


def compile_mode(device: torch.device) -> Optional[str]:
    """``reduce-overhead`` (CUDA graphs) on a CUDA device, torch's default mode elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def compiled_forward(forward: StackedForward, device: torch.device) -> StackedForward:
    return torch.compile(forward, mode=compile_mode(device))


def _step(
    chain: LayerChain,
    model: FlatModel,
    clip_norm: float,
    w: torch.Tensor,
    loss_sum: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    active: torch.Tensor,
    const: Optional[torch.Tensor],
    prox: Optional[torch.Tensor],
    decay: torch.Tensor,
    lr: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new models [A, P], loss sum [A]) after one step: the eager loop's arithmetic, pure."""
    client_ce, grad = chain.ce_grad(model, w, x, y, weights)
    if const is not None:
        grad = grad + const
    if prox is not None:
        grad = grad + prox * w
    new = sgd_step(w, grad, lr, decay, clip_norm)
    return torch.where(active, new, w), loss_sum + client_ce


def step_function(chain: LayerChain, model: FlatModel, clip_norm: float, device: torch.device) -> Callable:
    """The compiled step of ``chain`` (compile once per model and clip value, then reuse)."""
    return torch.compile(partial(_step, chain, model, clip_norm), mode=compile_mode(device))


def train_compiled(
    step: Callable,
    w: torch.Tensor,
    steps: list,
    augmented: Callable[[int, torch.Tensor], torch.Tensor],
    const: Optional[torch.Tensor],
    prox: Optional[torch.Tensor],
    decay: torch.Tensor,
    hp: LocalTraining,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the compiled ``step`` over a chunk's prepared steps; returns (models, loss sum)."""
    count, device = w.shape[0], w.device
    lr = torch.tensor(hp.lr, dtype=w.dtype, device=device)  # a tensor: a new lr does not recompile
    everyone = torch.ones(count, 1, dtype=torch.bool, device=device)
    loss_sum = torch.zeros(count, device=device)
    graphs = device.type == "cuda"
    with torch.no_grad():
        for s in steps:
            if graphs:  # a new step: the previous replay's outputs were copied out below
                torch.compiler.cudagraph_mark_step_begin()
            w, loss_sum = step(
                w, loss_sum, augmented(s.index, s.x), s.y3.squeeze(-1), s.weights,
                everyone if s.active is None else s.active, const, prox, decay, lr,
            )
            if graphs:  # CUDA-graph outputs are overwritten by the next replay
                w, loss_sum = w.clone(), loss_sum.clone()
    return w, loss_sum
