"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020), as the authors' code (JYWa/FedNova, ``distoptim/FedNova.py``) with
fedrun's local training (plain SGD: no momentum, no proximal term, so the normalising a_k = τ_k).

Client k takes τ_k local steps (E·⌈n_k/B⌉: they differ with the clients' sizes); with
p_k = n_k / Σ_{j∈P_t} n_j and τ_eff = Σ_{k∈P_t} p_k τ_k the server moves by the normalised average

    d = −τ_eff · Σ_{k∈P_t} p_k (θ_k − θ)/τ_k,   θ ← θ − d

(equal τ_k: FedAvg's n_k-weighted mean). With server momentum ``gmf`` > 0 (the code's ``gmf``):
buf ← gmf·buf + d/η, θ ← θ − η·buf (η this round's local lr). The code runs every client every round;
fedrun normalises p_k over the active clients (docs/algorithms.md, "FedNova").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedrun.algorithms.base import Algorithm, Round, ServerState
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class FedNova(Algorithm):
    gmf: float = 0.0

    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gmf) and 0 <= self.gmf < 1):
            raise FedrunError(f"algo.gmf={self.gmf} is not in [0, 1): use a server momentum factor 0 <= gmf < 1 (0 = off, the authors' default).")

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"buf": torch.zeros_like(theta)} if self.gmf > 0 else {}

    def server_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor, new_rows):
        p = rnd.sizes.to(thetas.dtype) / rnd.sizes.sum()
        tau = rnd.steps.to(thetas.device, thetas.dtype)
        tau_eff = (p * tau).sum()
        step = tau_eff * ((p / tau)[:, None] * (thetas - rnd.theta[None, :])).sum(0)
        if self.gmf == 0:
            return rnd.theta + step, server
        buf = self.gmf * server["buf"] - step / rnd.lr
        return rnd.theta - rnd.lr * buf, {**server, "buf": buf}
