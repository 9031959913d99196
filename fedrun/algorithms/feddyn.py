"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021, Algorithm 1).

Two forms of the same method (docs/paper.md, "Algorithm" and "How the reference code realises it"):

:class:`FedDyn` (``algo=feddyn``) - the authors' code (github alpemreacar/FedDyn):

* per-client α_k = α / w_k with w_k = n_k·m/N (equal to α on balanced data);
* client state s_k = −g_k/α_k (table ``"s"``, zeros at start);
* local loss CE + α_k·⟨w, s_k − θ^{t−1}⟩; the quadratic (α_k/2)‖w‖² enters as extra SGD weight
  decay α_k, so it is added after the gradient clip (Algorithm 1's (α/2)‖w − θ^{t−1}‖² up to a
  constant, since its gradient α_k w − α_k θ^{t−1} is split between the decay and the linear term);
* after training s_k ← s_k + (θ_k^t − θ^{t−1});
* server θ^t = (unweighted mean of the active θ_k^t) + (mean of s_k over ALL m clients). The mean of s
  is kept as server state ``s_mean`` and updated by Σ_{k∈P_t}(s_k⁺ − s_k)/m, which is Algorithm 1's
  h update h ← h − (α/m)·Σ_{k∈P_t}(θ_k^t − θ^{t−1}) written for s = −h/α (a sum of differences,
  divided by all m clients).

:class:`FedDynPaper` (``algo=feddyn_paper``) - Algorithm 1 as printed, one α for every client:

* client state g_k (table ``"g"``), local loss CE − ⟨g_k, w⟩ + (α/2)‖w − θ^{t−1}‖², the quadratic
  inside the loss (so it is clipped with the rest);
* g_k ← g_k − α(θ_k^t − θ^{t−1});
* h ← h − (α/m)·Σ_{k∈P_t}(θ_k^t − θ^{t−1});  θ^t = mean_{k∈P_t} θ_k^t − h/α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedrun.algorithms.base import Algorithm, LocalObjective, Round, ServerState
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class _FedDynBase(Algorithm):
    alpha: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise FedrunError(f"algo.alpha={self.alpha} is not a positive number: use a FedDyn alpha > 0 (e.g. algo.alpha=0.01).")

    @property
    def table(self) -> str:
        return self.client_states[0]


@dataclass(frozen=True)
class FedDyn(_FedDynBase):
    """The reference code's form: state s_k, α_k = α / w_k, the quadratic as weight decay."""

    client_states: ClassVar[tuple[str, ...]] = ("s",)

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"s_mean": torch.zeros_like(theta)}

    def alpha_k(self, rnd: Round) -> torch.Tensor:
        return self.alpha / rnd.weights

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        alpha_k = self.alpha_k(rnd)
        return LocalObjective(linear=alpha_k[:, None] * (rnd.rows["s"] - rnd.theta[None, :]), decay=alpha_k)

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": rnd.rows["s"] + (thetas - rnd.theta[None, :])}

    def server_update(self, rnd, server, thetas, new_rows):
        s_mean = server["s_mean"] + (new_rows["s"] - rnd.rows["s"]).sum(0) / rnd.ctx.num_clients
        return thetas.mean(0) + s_mean, {**server, "s_mean": s_mean}


@dataclass(frozen=True)
class FedDynPaper(_FedDynBase):
    """Algorithm 1 as printed: state g_k, one α, the quadratic inside the (clipped) loss."""

    client_states: ClassVar[tuple[str, ...]] = ("g",)

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"h": torch.zeros_like(theta)}

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        theta = rnd.theta
        prox = torch.full((len(rnd.clients),), self.alpha, device=theta.device, dtype=theta.dtype)
        return LocalObjective(linear=-rnd.rows["g"], prox=prox, anchor=theta)

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"g": rnd.rows["g"] - self.alpha * (thetas - rnd.theta[None, :])}

    def server_update(self, rnd, server, thetas, new_rows):
        # Sum of DIFFERENCES theta_k - theta over the active clients, divided by ALL m clients.
        h = server["h"] - (self.alpha / rnd.ctx.num_clients) * (thetas - rnd.theta[None, :]).sum(0)
        return thetas.mean(0) - h / self.alpha, {**server, "h": h}
