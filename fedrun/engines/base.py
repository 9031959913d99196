"""What every engine shares: the local-training hyperparameters, the batch schedule and the step.

Local training is the FedDyn reference code's: plain SGD (no momentum); each step takes the
gradient of ``CE(mean over the batch) + extra terms``, clips its norm to ``clip_norm`` (as
``torch.nn.utils.clip_grad_norm_``: factor ``clip / (norm + 1e-6)`` capped at 1), adds
``(weight_decay + decay_k) * w`` (torch SGD's weight decay, outside the clip) and moves by ``lr``.
A client's batches come from its own generator seeded by (seed, round, client id), so the schedule
does not depend on which engine runs it or in which order clients are processed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from fedrun.algorithms.base import LocalObjective
from fedrun.config.specs import LocalTraining  # noqa: F401  (the engines' hyperparameters, also as engines.base.*)
from fedrun.data import FederatedData
from fedrun.models.params import FlatModel
from fedrun.seeding import generator


@dataclass
class LocalResult:
    thetas: torch.Tensor  # [A, P] the active clients' models after training
    loss: torch.Tensor  # [A] mean cross-entropy over each client's local steps
    steps: torch.Tensor  # [A] int64, local steps taken


def batch_schedule(
    n: int, epochs: int, batch_size: int, g: torch.Generator, steps: Optional[int] = None
) -> list[torch.Tensor]:
    """Local indices of each step: passes over a fresh permutation, last batch of a pass smaller.

    ``epochs`` passes by default; with ``steps`` exactly that many steps, passing over the data as
    often as needed (SCAFFOLD's fixed K).
    """
    total = epochs * math.ceil(n / batch_size) if steps is None else int(steps)
    out: list[torch.Tensor] = []
    while len(out) < total:
        out.extend(torch.randperm(n, generator=g).split(batch_size))
    return out[:total]


def padded_schedule(
    n: int, epochs: int, batch_size: int, g: torch.Generator, steps: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch_schedule` as one padded tensor: (local indices [S, B], real samples per step [S]).

    The same permutations from the same generator (one ``randperm`` per pass), so row ``s`` holds
    step ``s``'s indices followed by zeros where the last batch of a pass is smaller.
    """
    per_pass = math.ceil(n / batch_size)
    total = epochs * per_pass if steps is None else int(steps)
    if n == 0 or total == 0:
        return torch.zeros(0, batch_size, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    passes = math.ceil(total / per_pass)
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(passes)])
    local = torch.nn.functional.pad(perms, (0, per_pass * batch_size - n)).view(passes * per_pass, batch_size)
    counts = torch.full((passes, per_pass), batch_size, dtype=torch.long)
    counts[:, -1] = n - (per_pass - 1) * batch_size
    return local[:total], counts.view(-1)[:total]


def round_draws(augment: object, schedule: list[torch.Tensor], g: torch.Generator) -> Optional[tuple[torch.Tensor, ...]]:
    """All the augmentation random numbers of one client's round, drawn at once, or None.

    For an augmentation that splits into ``draw(n, g)`` (per-sample random numbers) and
    ``apply(x, *drawn)`` (e.g. :class:`~fedrun.data.augment.FlipCrop`), the numbers of the whole round
    come from one ``draw`` over all its samples in schedule order, and the sample at position ``j`` of
    the round uses row ``j`` of each. Both engines use this, so their augmented batches are the same,
    and the vectorised engine draws once per client and round instead of once per step. Any other
    augmentation callable is called per batch as ``augment(x, g)`` (``None`` here).
    """
    return draws_for(augment, sum(len(t) for t in schedule), g)


def draws_for(augment: object, samples: int, g: torch.Generator) -> Optional[tuple[torch.Tensor, ...]]:
    """:func:`round_draws` of a round of ``samples`` samples."""
    if augment is None or not (hasattr(augment, "draw") and hasattr(augment, "apply")):
        return None
    return augment.draw(samples, g)


def client_generators(seed: int, round_idx: int, client: int) -> tuple[torch.Generator, torch.Generator]:
    """(batch-order generator, augmentation generator) of one client in one round."""
    return generator(seed, "local", round_idx, client), generator(seed, "augment", round_idx, client)


def sgd_step(
    w: torch.Tensor, grad: torch.Tensor, lr: float, decay: torch.Tensor | float, clip_norm: float
) -> torch.Tensor:
    """One SGD step for stacked parameters ``w`` [A, P] with gradients ``grad`` [A, P] (a new tensor).

    ``decay`` is the total weight decay, a float or an [A, 1] tensor. :func:`sgd_step_` computes the
    same numbers in place.
    """
    if clip_norm > 0:
        norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        grad = grad * (clip_norm / (norm + 1e-6)).clamp(max=1.0)
    return w - lr * (grad + decay * w)


def sgd_step_(
    w: torch.Tensor, grad: torch.Tensor, lr: float, decay: torch.Tensor | float, clip_norm: float
) -> torch.Tensor:
    """:func:`sgd_step` in place: ``w`` becomes the new parameters, ``grad`` is overwritten.

    Each operation is the one the out-of-place formula ``w - lr * (clip(grad) + decay * w)`` runs
    (``clip / (norm + 1e-6)`` is torch's reciprocal-then-multiply), so the numbers are bit for bit
    the same; only the allocations are gone.
    """
    if clip_norm > 0:
        factor = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        grad.mul_(factor.add_(1e-6).reciprocal_().mul_(clip_norm).clamp_(max=1.0))
    grad.add_(decay * w).mul_(lr)
    return w.sub_(grad)


def total_decay(objective: LocalObjective, hp: LocalTraining, count: int, device: torch.device) -> torch.Tensor:
    """[A, 1] weight decay of each client: the config's plus the algorithm's."""
    decay = torch.full((count, 1), hp.weight_decay, device=device)
    if objective.decay is not None:
        decay = decay + objective.decay.reshape(count, 1).to(device)
    return decay


class Engine:
    """Runs local training of the active clients from the server model ``theta``.

    ``clients`` are the active ids on the CPU: the engines read them on the host (a tensor on a GPU
    works too, at the cost of a synchronisation per read)."""

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
        raise NotImplementedError
