"""FedSMOO (Sun et al., "Dynamic Regularized Sharpness Aware Minimization in Federated Learning:
Approaching Global Consistency and Smooth Landscape", ICML 2023, Algorithm 1), as the authors' code
(woodenchild95/FL-Simulator, ``client/fedsmoo.py``, ``optimizer/DRegSAM.py``, ``server/FedSMOO.py``).

FedSpeed's dynamic regulariser (:mod:`.fedspeed`: state h_k, linear term λ(h_k − θ), decay λ, server
mean of the active models plus mean of all h_k) with a SAM perturbation corrected towards the global
one. State: h_k and the dual μ_k per client (tables ``"h"``, ``"mu"``), s at the server (zeros). Each
local step on a batch (:class:`SmooHook`):

    g = ∇CE(w);  d = g − μ_k − s;  e = ρ·d/(‖d‖ + 1e-7);  μ_k ← μ_k + e − s;
    step gradient ∇CE(w + e) + λ(h_k − θ)  (clipped; weight decay + λ after it).

μ_k is carried through the steps and rounds. The server sets s ← ρ·μ̄/(‖μ̄‖ + 1e-7), μ̄ the mean of the
active clients' new μ_k (the code drops the paper's ŝ_{i,K} term: docs/algorithms.md, "FedSMOO").
Model and μ_k up, model and s down (2x FedAvg each way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from fedrun.algorithms.base import GradFn, LocalHook, LocalObjective, Round, ServerState
from fedrun.algorithms.fedspeed import FedSpeed
from fedrun.algorithms.sam import EPS, ascent


@dataclass(frozen=True)
class SmooHook(LocalHook):
    """DRegSAM's step; ``mu`` [A, P] is this round's copy of the active clients' μ_k, updated at each
    step a client really takes (``active``; the vectorised engine pads shorter schedules)."""

    rho: float
    s: torch.Tensor  # [P]
    mu: torch.Tensor = field(repr=False)  # [A, P]

    def gradient(
        self, grad_fn: GradFn, w: torch.Tensor, objective: LocalObjective, active: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = objective.hook_rows
        loss, g = grad_fn(w, False)
        e = ascent(g - self.mu[rows] - self.s, self.rho)
        change = e - self.s
        self.mu[rows] += change if active is None else torch.where(active, change, torch.zeros_like(change))
        _, grad = grad_fn(w + e, True)
        return loss, grad

    def result(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu}


@dataclass(frozen=True)
class FedSMOO(FedSpeed):
    client_states: ClassVar[tuple[str, ...]] = ("h", "mu")
    uplink: ClassVar[int] = 2
    downlink: ClassVar[int] = 2

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"h_mean": torch.zeros_like(theta), "s": torch.zeros_like(theta)}

    def hook(self, rnd: Round, server: ServerState) -> LocalHook:
        return SmooHook(self.rho, server["s"], rnd.rows["mu"].clone())

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().client_update(rnd, server, thetas), "mu": rnd.local["mu"]}

    def server_update(self, rnd, server, thetas, new_rows):
        theta, server = super().server_update(rnd, server, thetas, new_rows)
        mean_mu = new_rows["mu"].mean(0)
        s = mean_mu * (self.rho / (torch.linalg.vector_norm(mean_mu) + EPS))
        return theta, {**server, "s": s}
