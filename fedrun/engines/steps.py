"""A chunk's local steps prepared before its loop, and the loop of the explicit gradient.

:class:`Plan` pads the clients' batch schedules (:func:`~fedrun.engines.base.padded_schedule`) to
``[A, S, B]`` global sample ids with sample weights and activity, and :meth:`Plan.steps` hands out
each step's tensors, gathered ahead in blocks. :func:`train_explicit` is the vectorised engine's
loop for Flatten/Linear/ReLU chains in float32: each step is its arithmetic, with the numbers of
the general loop bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import torch

from fedrun.algorithms.base import LocalObjective
from fedrun.data import FederatedData
from fedrun.engines.base import LocalTraining, client_generators, draws_for, padded_schedule, sgd_step, sgd_step_
from fedrun.engines.stacked import ChainGrad, LayerChain
from fedrun.models.params import FlatModel

BLOCK_BYTES = 16 * 2**20  # input samples gathered at once by Plan.steps


def train_explicit(
    model: FlatModel,
    chain: LayerChain,
    w: torch.Tensor,
    data: FederatedData,
    plan: Plan,
    const: Optional[torch.Tensor],
    prox: Optional[torch.Tensor],
    decay: torch.Tensor,
    hp: LocalTraining,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local training of a chunk by a Flatten/Linear/ReLU chain's explicit gradient, in float32.

    ``w`` [A, P] (the chunk's starting models, a buffer of its own) is updated in place; the
    extra terms' gradient is ``const + prox * w``. Everything a step needs is made before the loop
    (:meth:`Plan.steps`, :class:`~fedrun.engines.stacked.ChainGrad`), so each step is its arithmetic:
    the chain's kernels, the extra terms and the in-place SGD step (:func:`sgd_step_`), with the
    numbers of the general loop bit for bit.
    """
    grad_of = ChainGrad(chain, model, w, hp.batch_size)
    loss_sum = torch.zeros(w.shape[0], device=w.device)
    with torch.no_grad():
        for step in plan.steps(data):
            x = augmented(data, plan, step.index, step.x)
            neg_ce, grad = grad_of(x, step.y3, step.weights, step.weights3)
            loss_sum.sub_(neg_ce)  # loss_sum += CE
            if const is not None:
                grad.add_(const)
            if prox is not None:
                grad.addcmul_(prox, w)
            if step.active is None:
                sgd_step_(w, grad, hp.lr, decay, hp.clip_norm)
            else:  # clients without this step keep their model
                torch.where(step.active, sgd_step(w, grad, hp.lr, decay, hp.clip_norm), w, out=w)
    taken = plan.counts_cpu.gt(0).sum(1)
    return w, loss_sum / taken.clamp(min=1).to(w.device), taken


def augmented(data: FederatedData, plan: Plan, s: int, x: torch.Tensor) -> torch.Tensor:
    """Step ``s``'s inputs ``x`` [A, B, ...] after the data's augmentation, if any."""
    if plan.aug_draws is not None:  # this step's rows of every client's round draws: one call
        count, batch = x.shape[0], x.shape[1]
        return data.augment.apply(
            x.reshape(count * batch, *x.shape[2:]), *(d[:, s].reshape(count * batch, *d.shape[3:]) for d in plan.aug_draws)
        ).view_as(x)
    if data.augment is not None:
        return _augment(data, x, plan.counts_cpu[:, s].tolist(), plan.aug_generators)
    return x


@dataclass
class Plan:
    """Padded batch schedules of a chunk of clients: global rows [A, S, B], weights, activity."""

    rows: torch.Tensor  # [A, S, B] int64 global sample ids (padding: the client's first sample)
    weights: torch.Tensor  # [A, S, B] 1/count on real samples, 0 on padding
    active: torch.Tensor  # [A, S] bool: client has a step s
    everyone: list[bool]  # [S]: every client has a step s
    counts_cpu: torch.Tensor  # [A, S] real samples per step
    aug_generators: list[torch.Generator]
    aug_draws: Optional[list[torch.Tensor]]  # per draw: [A, S, B, ...] on the device (padding: zeros)
    num_steps: int

    @staticmethod
    def build(
        ids: list[int],
        partition: list[torch.Tensor],
        objective: LocalObjective,
        hp: LocalTraining,
        seed: int,
        round_idx: int,
        device: torch.device,
        augment: object = None,
    ) -> Plan:
        schedules, aug, draws = [], [], []
        for a, client in enumerate(ids):
            g_batch, g_aug = client_generators(seed, round_idx, client)
            fixed = None if objective.steps is None else int(objective.steps[a])
            schedules.append(padded_schedule(len(partition[client]), hp.epochs, hp.batch_size, g_batch, fixed))
            aug.append(g_aug)
            draws.append(draws_for(augment, int(schedules[-1][1].sum()), g_aug))
        count, batch = len(ids), hp.batch_size
        num_steps = max((len(c) for _, c in schedules), default=0)
        local = torch.zeros(count, num_steps, batch, dtype=torch.long)
        counts = torch.zeros(count, num_steps, dtype=torch.long)
        for a, (sched, cnt) in enumerate(schedules):
            local[a, : len(cnt)] = sched
            counts[a, : len(cnt)] = cnt
        sizes = [len(partition[c]) for c in ids]
        index = torch.zeros(count, max(sizes, default=1), dtype=torch.long, device=device)
        for a, client in enumerate(ids):
            index[a, : sizes[a]] = partition[client].to(device)
        local_dev = local.to(device, non_blocking=True)
        rows = torch.gather(index, 1, local_dev.view(count, -1)).view(count, num_steps, batch)
        mask = torch.arange(batch).view(1, 1, batch) < counts.unsqueeze(-1)
        weights = mask.float() / counts.clamp(min=1).unsqueeze(-1).float()
        active = counts.gt(0)
        aug_draws = None
        if draws and draws[0] is not None:  # scatter each client's round draws onto its real sample slots
            aug_draws = []
            for k, first in enumerate(draws[0]):
                full = first.new_zeros((count, num_steps, batch, *first.shape[1:]))
                for a in range(count):
                    full[a][mask[a]] = draws[a][k]  # row-major over (step, slot): the round's sample order
                aug_draws.append(full.to(device))
        return Plan(
            rows, weights.to(device), active.to(device), active.all(0).tolist(), counts, aug, aug_draws, num_steps
        )

    def steps(self, data: FederatedData, block_bytes: int = BLOCK_BYTES) -> Iterator["Step"]:
        """Each step's batch, made ahead of the loop: the samples of several steps are gathered
        in one indexing call (as many steps as fit in ``block_bytes``, at least one) into
        contiguous per-step tensors; labels, weights and activity are split per step once."""
        count, num_steps, batch = self.rows.shape
        rows = self.rows.transpose(0, 1)  # [S, A, B]
        ys = data.y_train[rows].unsqueeze(-1).unbind(0)  # [A, B, 1] each
        weights = self.weights.transpose(0, 1).contiguous()
        weights2, weights3 = weights.unbind(0), weights.unsqueeze(-1).unbind(0)
        active = self.active.t().unsqueeze(-1).unbind(0)  # [A, 1] each
        per_step = count * batch * data.x_train[0].numel() * data.x_train.element_size()
        block = max(1, block_bytes // max(per_step, 1))
        for start in range(0, num_steps, block):
            xs = data.x_train[rows[start : start + block]].unbind(0)
            for s, x in enumerate(xs, start):
                yield Step(s, x, ys[s], weights2[s], weights3[s], None if self.everyone[s] else active[s])


class Step(NamedTuple):
    """One local step of a chunk: its index, inputs [A, B, ...], labels [A, B, 1], sample weights
    [A, B] and [A, B, 1], and which clients take it ([A, 1] bool, None when all do)."""

    index: int
    x: torch.Tensor
    y3: torch.Tensor
    weights: torch.Tensor
    weights3: torch.Tensor
    active: Optional[torch.Tensor]


def _augment(data: FederatedData, x: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> torch.Tensor:
    """Apply an augmentation callable without ``draw``/``apply`` (those use the plan's round draws)
    to each client's real samples, once per client with that client's generator."""
    aug, count, batch = data.augment, x.shape[0], x.shape[1]
    pieces = [aug(x[a, :c], generators[a]) if c > 0 else None for a, c in enumerate(counts)]
    first = next(p for p in pieces if p is not None)
    out = first.new_zeros((count, batch, *first.shape[1:]))
    for a, p in enumerate(pieces):
        if p is not None:
            out[a, : p.shape[0]] = p
    return out
