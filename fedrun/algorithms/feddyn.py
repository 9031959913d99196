"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021, Algorithm 1).

Two forms of the same method (PAPER.md, "Algorithm" and "How the reference code realises it"):

``variant="reference"`` (default) - the authors' code (github alpemreacar/FedDyn):

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

``variant="paper"`` - Algorithm 1 as printed, one α for every client:

* client state g_k (table ``"g"``), local loss CE − ⟨g_k, w⟩ + (α/2)‖w − θ^{t−1}‖², the quadratic
  inside the loss (so it is clipped with the rest);
* g_k ← g_k − α(θ_k^t − θ^{t−1});
* h ← h − (α/m)·Σ_{k∈P_t}(θ_k^t − θ^{t−1});  θ^t = mean_{k∈P_t} θ_k^t − h/α.

Inactive clients' state is never touched; state rows are read and written by client id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedrun.algorithms.base import Algorithm, FedContext, LocalObjective, RoundInfo, ServerState
from fedrun.errors import FedrunError
from fedrun.state import ClientStateStore

VARIANTS = ("reference", "paper")


@dataclass
class FedDyn(Algorithm):
    alpha: float = 0.01
    variant: str = "reference"

    client_states: ClassVar[tuple[str, ...]] = ("s",)  # the paper variant uses ("g",), set per instance

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise FedrunError(f"algo.alpha={self.alpha} is not a positive number: use a FedDyn alpha > 0 (e.g. algo.alpha=0.01).")
        if self.variant not in VARIANTS:
            raise FedrunError(f"algo.variant={self.variant!r} is unknown: use algo.variant=reference or algo.variant=paper.")
        # One [m, P] table either way: s_k = -g_k/alpha_k (reference) or g_k itself (paper).
        self.client_states = ("s",) if self.variant == "reference" else ("g",)

    @property
    def table(self) -> str:
        return self.client_states[0]

    def setup(self, ctx: FedContext, theta: torch.Tensor, store: ClientStateStore) -> ServerState:
        super().setup(ctx, theta, store)
        if self.variant == "reference":
            self.alpha_k = (self.alpha / ctx.weights).to(theta.device)  # [m]
            return {"s_mean": torch.zeros_like(theta)}
        return {"h": torch.zeros_like(theta)}

    def local_objective(
        self, theta: torch.Tensor, server: ServerState, store: ClientStateStore, info: RoundInfo
    ) -> LocalObjective:
        state = store.get(self.table, info.clients)
        count = len(info.clients)
        if self.variant == "reference":
            alpha_k = self.alpha_k[info.clients]
            return LocalObjective(linear=alpha_k[:, None] * (state - theta[None, :]), decay=alpha_k)
        prox = torch.full((count,), self.alpha, device=theta.device, dtype=theta.dtype)
        return LocalObjective(linear=-state, prox=prox, anchor=theta)

    def client_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> dict[str, torch.Tensor]:
        state = store.get(self.table, info.clients)
        step = client_thetas - theta[None, :]
        if self.variant == "reference":
            return {"s": state + step}
        return {"g": state - self.alpha * step}

    def server_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        new_states: dict[str, torch.Tensor],
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> tuple[torch.Tensor, ServerState]:
        m = self.ctx.num_clients
        server = dict(server)
        mean_active = client_thetas.mean(0)
        if self.variant == "reference":
            old = store.get("s", info.clients)
            server["s_mean"] = server["s_mean"] + (new_states["s"] - old).sum(0) / m
            return mean_active + server["s_mean"], server
        # Sum of DIFFERENCES theta_k - theta over the active clients, divided by ALL m clients.
        server["h"] = server["h"] - (self.alpha / m) * (client_thetas - theta[None, :]).sum(0)
        return mean_active - server["h"] / self.alpha, server
