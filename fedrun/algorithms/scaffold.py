"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML 2020, Algorithm 1 with control-variate option II).

State: c_k per client (table ``"c"``) and c at the server, all zero at start. Every active client
takes the same K = E·⌈(N/m)/B⌉ local steps (looping over its own data as often as needed; N the
total number of training samples), with the gradient correction of Algorithm 1 (line 10) as the
linear term of its loss (inside the clip). Then option II (line 12) gives c_k⁺, and the server
(lines 16-17) sets θ^t = θ^{t−1} + η_g·(mean_{k∈P_t} θ_k^t − θ^{t−1}) (unweighted; η_g = ``server_lr``)
and adds the clients' changes of c_k to c, divided by ALL m clients.

``variant="reference"`` (default) - the FedDyn authors' code (PAPER.md, "Baselines"), w_k = n_k·m/N:

* correction ⟨w, c/w_k − c_k⟩;
* c_k⁺ = c_k − c + (θ^{t−1} − θ_k^t)/(K·lr) with lr the CONFIGURED learning rate (the reference code
  divides by it even when the local steps used lr·decay^(t−1); identical when ``lr_decay=1``);
* c ← c + Σ_{k∈P_t} w_k (c_k⁺ − c_k) / m, so c stays the n_k-weighted mean of every client's c_k.

``variant="paper"`` - Algorithm 1 as printed:

* correction ⟨w, c − c_k⟩;
* c_k⁺ = c_k − c + (θ^{t−1} − θ_k^t)/(K·η_l), η_l this round's learning rate;
* c ← c + Σ_{k∈P_t} (c_k⁺ − c_k) / m, so c stays the plain mean of every client's c_k.

Both are the same on balanced data with a constant learning rate. Model and control variate travel
both ways, so a round sends twice FedAvg's parameters.
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
class Scaffold(Algorithm):
    server_lr: float = 1.0
    variant: str = "reference"

    client_states: ClassVar[tuple[str, ...]] = ("c",)
    uplink: ClassVar[int] = 2
    downlink: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise FedrunError(f"algo.server_lr={self.server_lr} is not a positive number: use a global learning rate > 0 (1 = the reference code).")
        if self.variant not in VARIANTS:
            raise FedrunError(f"algo.variant={self.variant!r} is unknown: use algo.variant=reference or algo.variant=paper.")

    def setup(self, ctx: FedContext, theta: torch.Tensor, store: ClientStateStore) -> ServerState:
        super().setup(ctx, theta, store)
        total = int(ctx.client_sizes.sum())
        # K = E * ceil((N/m)/B), in integer arithmetic: ceil(N / (m*B)).
        self.local_steps = ctx.local_epochs * (-(-total // (ctx.num_clients * ctx.batch_size)))
        # Per-client weight of c: w_k = n_k m / N (reference code), or 1 (the paper).
        weights = ctx.weights if self.variant == "reference" else torch.ones(ctx.num_clients)
        self.weights = weights.to(theta.device, theta.dtype)
        return {"c": torch.zeros_like(theta)}

    def local_objective(
        self, theta: torch.Tensor, server: ServerState, store: ClientStateStore, info: RoundInfo
    ) -> LocalObjective:
        c_k = store.get("c", info.clients)
        w_k = self.weights[info.clients]
        steps = torch.full((len(info.clients),), self.local_steps, dtype=torch.long, device=theta.device)
        return LocalObjective(linear=server["c"][None, :] / w_k[:, None] - c_k, steps=steps)

    def client_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> dict[str, torch.Tensor]:
        lr = info.lr
        if self.variant == "reference" and info.base_lr is not None:
            lr = info.base_lr
        c_k = store.get("c", info.clients)
        k_lr = info.steps.to(client_thetas.device, client_thetas.dtype)[:, None] * lr
        return {"c": c_k - server["c"][None, :] + (theta[None, :] - client_thetas) / k_lr}

    def server_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        new_states: dict[str, torch.Tensor],
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> tuple[torch.Tensor, ServerState]:
        old = store.get("c", info.clients)
        w_k = self.weights[info.clients]
        server = dict(server)
        server["c"] = server["c"] + (w_k[:, None] * (new_states["c"] - old)).sum(0) / self.ctx.num_clients
        new_theta = self.server_lr * client_thetas.mean(0) + (1.0 - self.server_lr) * theta
        return new_theta, server
