"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Algorithm 2).

Each active client minimises its proximal objective (the paper's Eq. (2))

    h_k(w; θ^{t−1}) = F_k(w) + (μ/2)‖w − θ^{t−1}‖²,

with the proximal term inside the loss (so it is clipped with the rest, as in the FedDyn reference
code's FedProx baseline, which writes it as (μ/2)‖w‖² − μ⟨w, θ^{t−1}⟩: the same gradient). The server
takes the n_k-weighted mean of the active models, as FedAvg. With μ = 0 it is FedAvg exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedrun.algorithms.base import LocalObjective, Round, ServerState
from fedrun.algorithms.fedavg import FedAvg
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedAvg's server (n_k-weighted mean) with the proximal local objective."""

    mu: float = 1e-4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise FedrunError(f"algo.mu={self.mu} is not a number >= 0: use a FedProx proximal weight mu >= 0 (e.g. algo.mu=0.0001).")

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        theta = rnd.theta
        prox = torch.full((len(rnd.clients),), self.mu, device=theta.device, dtype=theta.dtype)
        return LocalObjective(prox=prox, anchor=theta)
