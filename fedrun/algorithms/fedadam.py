"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2, FedAdam line).

Clients run plain local SGD on their loss (as FedAvg). The server treats the unweighted mean of the
active clients' updates as a pseudo-gradient,

    Δ_t = (1/|P_t|) Σ_{k∈P_t} (θ_k^t − θ^{t−1}),

and takes one Adam step on it, without bias correction (as Algorithm 2):

    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = β2 v_{t−1} + (1 − β2) Δ_t²
    θ^t = θ^{t−1} + η m_t / (√v_t + τ)

with m_{−1} = 0 and v_{−1} = τ² (Algorithm 2 asks for v_{−1} ≥ τ²); η = ``server_lr``.
``server_opt=sgd`` replaces Adam by plain server SGD, θ^t = (1 − η) θ^{t−1} + η·mean_{P_t} θ_k^t
(FedOpt's FedAvg with server learning rate η; η = 1 is the unweighted mean of the active models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedrun.algorithms.base import Algorithm, FedContext, RoundInfo, ServerState
from fedrun.errors import FedrunError
from fedrun.state import ClientStateStore

SERVER_OPTS = ("adam", "sgd")


@dataclass
class FedAdam(Algorithm):
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    server_opt: str = "adam"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise FedrunError(f"algo.server_lr={self.server_lr} is not a positive number: use a server learning rate > 0 (e.g. algo.server_lr=0.01).")
        for key, value in (("algo.beta1", self.beta1), ("algo.beta2", self.beta2)):
            if not 0.0 <= value < 1.0:
                raise FedrunError(f"{key}={value} is out of range: use a decay rate in [0, 1).")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise FedrunError(f"algo.tau={self.tau} is not a positive number: use an adaptivity constant tau > 0 (e.g. algo.tau=0.001).")
        if self.server_opt not in SERVER_OPTS:
            raise FedrunError(f"algo.server_opt={self.server_opt!r} is unknown: use algo.server_opt=adam or algo.server_opt=sgd.")

    def setup(self, ctx: FedContext, theta: torch.Tensor, store: ClientStateStore) -> ServerState:
        super().setup(ctx, theta, store)
        if self.server_opt == "sgd":
            return {}
        return {"m": torch.zeros_like(theta), "v": torch.full_like(theta, self.tau**2)}

    def server_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        new_states: dict[str, torch.Tensor],
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> tuple[torch.Tensor, ServerState]:
        mean_active = client_thetas.mean(0)
        if self.server_opt == "sgd":
            return (1.0 - self.server_lr) * theta + self.server_lr * mean_active, server
        delta = mean_active - theta
        server = dict(server)
        server["m"] = self.beta1 * server["m"] + (1.0 - self.beta1) * delta
        server["v"] = self.beta2 * server["v"] + (1.0 - self.beta2) * delta.square()
        return theta + self.server_lr * server["m"] / (server["v"].sqrt() + self.tau), server
