"""The vectorised engine: every active client's local step at once, over stacked parameters.

The active clients' flat models form one ``[A, P]`` tensor. Each client's batch schedule comes from
the same generators and :func:`~fedrun.engines.base.batch_schedule` as the sequential engine;
schedules are padded to ``[A, S, B]`` local indices with a mask, so at step ``s`` every client that
has a step ``s`` takes exactly the step the sequential engine would (cross-entropy averaged over its
real samples only) and every client that has none (fewer samples, SCAFFOLD's fixed step counts) is
left unchanged. Batches are gathered by index from the data on the device (no DataLoader).

The gradient of all clients comes from one backward of the sum of their losses (clients are
independent, so row ``a`` of the gradient is client ``a``'s), through a hand-batched forward for plain
layer chains (batched matmuls; convolutions as one grouped convolution over all clients) or
``torch.func.vmap`` for the rest (:mod:`fedrun.engines.stacked`); either is checked once against the
module's own output before it is used. Chains without convolutions (logistic regression, MLPs) skip
autograd: their gradient is computed explicitly. The gradient of the algorithm's extra terms,
:meth:`LocalObjective.extra_grad`, is added (as its constant part once per chunk plus ``prox * w``);
an objective's :class:`~fedrun.algorithms.base.LocalHook` gets the step's gradient function and
returns the gradient for all clients of the chunk at once. Clipping, weight decay and the update are
:func:`~fedrun.engines.base.sgd_step`. Augmentation random numbers are drawn once
per client and round (:func:`~fedrun.engines.base.round_draws`) and each step applies its slice for
all clients in one call. Steps are prepared before the loop (:class:`~fedrun.engines.steps.Plan`);
Linear/ReLU chains in float32 without a hook run :func:`~fedrun.engines.steps.train_explicit`, a
loop of bare arithmetic with the same numbers, and ``compile=true`` makes the step one
``torch.compile`` unit (:mod:`fedrun.engines.compiled`).

Active clients that do not fit in memory together are trained in chunks of ``chunk_size``
(0 = as many as the memory estimate allows, :mod:`fedrun.state.memory`). A model that ``vmap`` cannot
run (torch's fused ``nn.LSTM`` has no batching rule) is handed to the sequential engine
automatically, logged once. Under ``gradient=auto`` convolutional models on a CPU are trained one
client at a time by this engine (chunks of 1; measured faster there than a grouped convolution over
all clients and than the sequential engine, see :meth:`VectorizedEngine.forward_for`), and recurrent
models (the Shakespeare ``CharLSTM``) are handed to the sequential engine on every device: ``CharLSTM`` does run under
vmap (it unrolls into explicit matrix products there, :mod:`fedrun.models`) with the same results,
but on CPU that measured about 6x slower than torch's fused LSTM kernel one client at a time;
``gradient=vmap`` forces the vectorised path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from fedrun.algorithms.base import LocalObjective
from fedrun.data import FederatedData
from fedrun.engines.base import Engine, LocalResult, LocalTraining, sgd_step, total_decay
from fedrun.engines import compiled
from fedrun.engines.sequential import SequentialEngine
from fedrun.engines.steps import Plan, augmented, train_explicit
from fedrun.engines.stacked import LayerChain, StackedForward, agrees, batched_forward, unflatten_stacked, vmap_forward
from fedrun.errors import FedrunError
from fedrun.state import memory
from fedrun.models.params import FlatModel

log = logging.getLogger("fedrun")

GRADIENTS = ("auto", "batched", "vmap")
_fallback_logged: set[str] = set()


@dataclass
class VectorizedEngine(Engine):
    """``chunk_size``: clients trained at once (0 = automatic from free memory).
    ``gradient``: ``auto`` (layer chains and models with their own ``stacked_forward`` hand-batched:
    Linear/ReLU chains with an explicit backward, convolutional models as grouped convolutions on a
    GPU and one client at a time on CPU; other models through vmap), ``batched`` (the hand-batched
    forward through autograd, all clients at once also on CPU) or ``vmap``.
    ``compile``: ``torch.compile`` the whole local step of Linear/ReLU chains, the stacked forward of
    other models; CUDA graphs on a GPU (:mod:`fedrun.engines.compiled`; an option, off by default).
    """

    chunk_size: int = 0
    gradient: str = "auto"
    compile: bool = False
    _cache: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _steps: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.chunk_size < 0:
            raise FedrunError(f"engine.chunk_size={self.chunk_size} is negative: use 0 (automatic) or a positive number of clients.")
        if self.gradient not in GRADIENTS:
            raise FedrunError(f"engine.gradient={self.gradient} is unknown: use one of {', '.join(GRADIENTS)}.")

    # -- choices made once per model -------------------------------------------------------------
    def forward_for(self, model: FlatModel, data: FederatedData) -> Optional[StackedForward]:
        """The stacked forward for ``model`` (cached), or None when it must run sequentially."""
        if id(model) in self._cache:
            return self._cache[id(model)][0]
        forward: Optional[StackedForward] = None
        sample = data.x_train[:2]
        if data.augment is not None:
            sample = data.augment(sample, torch.Generator().manual_seed(0))
        if self.gradient in ("auto", "batched"):
            forward = batched_forward(model.module)
            if forward is not None and not agrees(model, forward, sample):
                forward = None
            if forward is None and self.gradient == "batched":
                raise FedrunError(
                    f"engine.gradient=batched does not support {type(model.module).__name__}: use engine.gradient=auto."
                )
        recurrent = any(isinstance(m, nn.RNNBase) for m in model.module.modules())
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.module.modules())
        if self.gradient == "auto" and recurrent:
            # Measured on CPU: the LSTM unrolled under vmap is ~6x slower than torch's fused kernel
            # one client at a time, so recurrent models run sequentially unless gradient=vmap.
            _log_fallback(model, "has recurrent layers (the fused LSTM kernel one client at a time is faster "
                                 "than an unrolled LSTM under vmap; engine.gradient=vmap forces vmap)")
            return self._remember(model, None, sample)
        # Convolutional models on CPU train one client at a time (chunks of 1) in this engine. Measured
        # on a 2-core CPU, 1 thread, one step of 4 clients, best of 9 (docs/datasets.md): CIFAR CNN
        # (B=50) grouped convolution over all clients 1.31 s, vmap 1.56 s, one at a time here 0.77 s,
        # the sequential engine 0.94 s; ResNet18GN (B=8) all at once 4.5 s, one at a time here 2.9 s,
        # the sequential engine 19-26 s (its gradient w.r.t. one flat vector writes a full-size zero
        # tensor per parameter tensor). On a GPU all clients run at once.
        serial = self.gradient == "auto" and convolutional and sample.device.type == "cpu"
        if serial:
            _log_once(model, "is trained one client at a time on CPU, measured faster than a grouped convolution over "
                             "all clients (engine.chunk_size, engine.gradient=batched or vmap train several at once)")
        if forward is None:
            forward = vmap_forward(model.module)
            if not agrees(model, forward, sample):  # e.g. torch's fused nn.LSTM: no batching rule
                forward = None
                _log_fallback(model, "cannot run under torch.func.vmap")
        explicit = isinstance(forward, LayerChain) and forward.explicit and self.gradient == "auto"
        if forward is not None and self.compile and not explicit:  # explicit chains compile the whole step
            forward = compiled.compiled_forward(forward, sample.device)  # A varies: dynamic after one recompile
        return self._remember(model, forward, sample, serial)

    def _remember(self, model: FlatModel, forward: Optional[StackedForward], sample: torch.Tensor, serial: bool = False) -> Optional[StackedForward]:
        act = memory.activation_bytes_per_sample(model.module, sample[:1])
        self._cache[id(model)] = (forward, act, model, serial)  # keep model alive so id() stays unique
        return forward

    def chunk_for(self, model: FlatModel, active: int, batch_size: int, device: torch.device) -> int:
        """Clients per chunk: ``chunk_size`` checked against free memory, 1 for a convolutional model on
        CPU under ``gradient=auto`` (:meth:`forward_for`), or the most that fit."""
        act, serial = self._cache[id(model)][1], self._cache[id(model)][3]
        if serial and self.chunk_size == 0:
            return 1
        per_client = memory.client_training_bytes(model.num_params, batch_size, act)
        free = memory.free_bytes(device)
        if self.chunk_size > 0:
            memory.check_chunk_fits(self.chunk_size, active, per_client, free, device)
            return self.chunk_size
        return memory.auto_chunk_size(active, per_client, free)

    # -- training --------------------------------------------------------------------------------
    def train(
        self,
        model: FlatModel,
        theta: torch.Tensor,
        data: FederatedData,
        partition: list[torch.Tensor],
        clients: torch.Tensor,
        objective: LocalObjective,
        hp: LocalTraining,
        seed: int,
        round_idx: int,
    ) -> LocalResult:
        forward = self.forward_for(model, data)
        if forward is None:
            return SequentialEngine().train(model, theta, data, partition, clients, objective, hp, seed, round_idx)
        count, device = len(clients), theta.device
        decay = total_decay(objective, hp, count, device)
        chunk = self.chunk_for(model, count, hp.batch_size, device)
        thetas = torch.empty(count, theta.numel(), device=device)
        losses = torch.empty(count, device=device)
        steps = torch.empty(count, dtype=torch.long)
        for start in range(0, count, chunk):
            part = slice(start, min(count, start + chunk))
            thetas[part], losses[part], steps[part] = self._train_chunk(
                model, forward, theta, data, partition, clients[part].tolist(),
                objective.rows(part), decay[part], hp, seed, round_idx,
            )
        return LocalResult(thetas, losses, steps)

    def _train_chunk(
        self,
        model: FlatModel,
        forward: StackedForward,
        theta: torch.Tensor,
        data: FederatedData,
        partition: list[torch.Tensor],
        ids: list[int],
        objective: LocalObjective,
        decay: torch.Tensor,
        hp: LocalTraining,
        seed: int,
        round_idx: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device, count = theta.device, len(ids)
        plan = Plan.build(ids, partition, objective, hp, seed, round_idx, device, data.augment)
        w = theta.detach().unsqueeze(0).repeat(count, 1)
        manual = isinstance(forward, LayerChain) and forward.explicit and self.gradient == "auto"
        const = prox = None
        if objective.has_extra:  # LocalObjective.extra_grad(w) = const + prox * w; const fixed for the round
            const, prox = objective.affine_parts(w)
        if manual and not hp.bf16 and objective.hook is None:
            if not self.compile:
                return train_explicit(model, forward, w, data, plan, const, prox, decay, hp)
            key = (id(model), hp.clip_norm)
            if key not in self._steps:
                self._steps[key] = compiled.step_function(forward, model, hp.clip_norm, device)
            w, loss_sum = compiled.train_compiled(
                self._steps[key], w, plan.steps(data), partial(augmented, data, plan), const, prox, decay, hp
            )
            taken = plan.counts_cpu.gt(0).sum(1)
            return w, loss_sum / taken.clamp(min=1).to(device), taken
        loss_sum = torch.zeros(count, device=device)
        # Autograd path: the parameter views of w are the leaves (w itself needs no gradient), so
        # backward writes each layer's gradient once and one cat joins them; differentiating w.r.t.
        # w would zero-fill and add a full [A, P] tensor per layer (slice_backward).
        for step in plan.steps(data):
            x, y, sample_weights = augmented(data, plan, step.index, step.x), step.y3.squeeze(-1), step.weights

            def grad_fn(v: torch.Tensor, extra: bool = True, x=x, y=y, sample_weights=sample_weights):
                """(cross-entropy [A], gradient [A, P]) at stacked parameters v on this step's batch."""
                v = v.detach()
                if manual:  # explicit backward, no autograd graph
                    with torch.no_grad():
                        with hp.autocast(v.device):
                            client_ce, grad = forward.ce_grad(model, v, x, y, sample_weights)
                        client_ce, grad = client_ce.float(), grad.float()  # bf16: back to float32 for the update
                else:
                    params = {name: view.requires_grad_(True) for name, view in unflatten_stacked(model, v).items()}
                    with hp.autocast(v.device):
                        logits = forward(params, x)
                    # per-sample cross-entropy as log_softmax + gather: same numbers as F.cross_entropy,
                    # but reduction="none" there runs a thread-parallel loop that stalls on a busy CPU.
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    ce = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # [A, B]
                    client_ce = (ce * sample_weights).sum(1)  # mean over each client's real samples
                    grads = torch.autograd.grad(client_ce.sum(), list(params.values()))
                    grad = torch.cat([g.reshape(count, -1) for g in grads], dim=1)
                if extra and objective.has_extra:
                    with torch.no_grad():
                        grad.add_(const)
                        if prox is not None:
                            grad.addcmul_(prox, v)
                return client_ce.detach(), grad

            client_ce, grad = objective.step_gradient(grad_fn, w, step.active)
            with torch.no_grad():
                new = sgd_step(w.detach(), grad, hp.lr, decay, hp.clip_norm)
                w = new if step.active is None else torch.where(step.active, new, w.detach())
                loss_sum += client_ce.detach()
        taken = plan.counts_cpu.gt(0).sum(1)
        return w.detach(), loss_sum / taken.clamp(min=1).to(device), taken


def _log_fallback(model: FlatModel, why: str) -> None:
    _log_once(model, f"{why}; training its clients with the sequential engine")


def _log_once(model: FlatModel, what: str) -> None:
    name = type(model.module).__name__
    if name not in _fallback_logged:
        _fallback_logged.add(name)
        log.info("engine=vectorized: %s %s.", name, what)
