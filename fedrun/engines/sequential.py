"""The reference engine: clients one after another, one autograd step at a time.

Plain and obviously correct; the vectorised engine is tested against it. Each step's gradient is
autograd's of the cross-entropy plus :meth:`LocalObjective.extra_grad`, or the objective's
:class:`~fedrun.algorithms.base.LocalHook`'s when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedrun.algorithms.base import LocalObjective
from fedrun.data import FederatedData
from fedrun.engines.base import (
    Engine,
    LocalResult,
    LocalTraining,
    batch_schedule,
    client_generators,
    round_draws,
    sgd_step,
    total_decay,
)
from fedrun.models.params import FlatModel


@dataclass
class SequentialEngine(Engine):
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
        count = len(clients)
        decay = total_decay(objective, hp, count, theta.device)
        thetas = torch.empty(count, theta.numel(), device=theta.device)
        losses = torch.empty(count, device=theta.device)
        steps = torch.empty(count, dtype=torch.long)
        for a, client in enumerate(clients.tolist()):
            own = objective.rows(slice(a, a + 1))
            index = partition[client]
            g_batch, g_aug = client_generators(seed, round_idx, client)
            fixed = None if own.steps is None else int(own.steps[0])
            schedule = batch_schedule(len(index), hp.epochs, hp.batch_size, g_batch, fixed)
            draws = round_draws(data.augment, schedule, g_aug)
            if draws is not None:
                draws = tuple(d.to(theta.device) for d in draws)
            w = theta.detach().clone().unsqueeze(0)
            loss_sum = torch.zeros((), device=theta.device)
            done = 0  # samples of this round so far: the position in the round's draws
            for local in schedule:
                rows = index[local.to(index.device)]
                x, y = data.x_train[rows], data.y_train[rows]
                if draws is not None:
                    x = data.augment.apply(x, *(d[done : done + len(local)] for d in draws))
                elif data.augment is not None:
                    x = data.augment(x, g_aug)
                done += len(local)

                def grad_fn(v: torch.Tensor, extra: bool = True, x=x, y=y) -> tuple[torch.Tensor, torch.Tensor]:
                    v = v.detach().requires_grad_(True)
                    with hp.autocast(v.device):
                        ce = F.cross_entropy(model(v[0], x), y)
                    (grad,) = torch.autograd.grad(ce, v)
                    if extra and own.has_extra:
                        grad = grad + own.extra_grad(v.detach())
                    return ce.detach().reshape(1), grad

                ce, grad = own.step_gradient(grad_fn, w)
                with torch.no_grad():
                    w = sgd_step(w.detach(), grad, hp.lr, decay[a : a + 1], hp.clip_norm)
                loss_sum += ce[0]
            thetas[a] = w.detach()[0]
            losses[a] = loss_sum / max(len(schedule), 1)
            steps[a] = len(schedule)
        return LocalResult(thetas, losses, steps)
