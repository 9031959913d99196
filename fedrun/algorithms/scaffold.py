"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML 2020, Algorithm 1 with control-variate option II).

State: c_k per client (table ``"c"``) and c at the server, all zero at start. Every active client
takes the same K = E·⌈(N/m)/B⌉ local steps (looping over its own data as often as needed; N the
total number of training samples), with the gradient correction of Algorithm 1 (line 10) as the
linear term of its loss (inside the clip). Then option II (line 12) gives c_k⁺, and the server
(lines 16-17) sets θ^t = θ^{t−1} + η_g·(mean_{k∈P_t} θ_k^t − θ^{t−1}) (unweighted; η_g = ``server_lr``)
and adds the clients' changes of c_k to c, divided by ALL m clients.

``algo=scaffold`` (:class:`Scaffold`) - the FedDyn authors' code (docs/paper.md, "Baselines"), w_k = n_k·m/N:

* correction ⟨w, c/w_k − c_k⟩;
* c_k⁺ = c_k − c + (θ^{t−1} − θ_k^t)/(K·lr) with lr the CONFIGURED learning rate (the reference code
  divides by it even when the local steps used lr·decay^(t−1); identical when ``lr_decay=1``);
* c ← c + Σ_{k∈P_t} w_k (c_k⁺ − c_k) / m, so c stays the n_k-weighted mean of every client's c_k.

``algo=scaffold_paper`` (:class:`ScaffoldPaper`) - Algorithm 1 as printed:

* correction ⟨w, c − c_k⟩;
* c_k⁺ = c_k − c + (θ^{t−1} − θ_k^t)/(K·η_l), η_l this round's learning rate;
* c ← c + Σ_{k∈P_t} (c_k⁺ − c_k) / m, so c stays the plain mean of every client's c_k.

Both are the same on balanced data with a constant learning rate. Model and control variate travel
both ways, so a round sends twice FedAvg's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedrun.algorithms.base import Algorithm, FedContext, LocalObjective, Round, ServerState
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class Scaffold(Algorithm):
    """The reference code's form: c scaled by w_k, the c_k update divides by the configured lr."""

    server_lr: float = 1.0

    client_states: ClassVar[tuple[str, ...]] = ("c",)
    uplink: ClassVar[int] = 2
    downlink: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise FedrunError(f"algo.server_lr={self.server_lr} is not a positive number: use a global learning rate > 0 (1 = the reference code).")

    def setup(self, ctx: FedContext) -> int:
        """K = E * ceil((N/m)/B), the local steps of every client, in integer arithmetic: ceil(N / (m*B))."""
        total = int(ctx.client_sizes.sum())
        return ctx.local_epochs * (-(-total // (ctx.num_clients * ctx.batch_size)))

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"c": torch.zeros_like(theta)}

    def c_weights(self, rnd: Round) -> torch.Tensor:
        """[A] weight of each active client's c_k in c: w_k = n_k m / N."""
        return rnd.weights.to(rnd.theta.dtype)

    def c_lr(self, rnd: Round) -> float:
        """The learning rate the c_k update divides by: the configured one."""
        return rnd.base_lr

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        w_k = self.c_weights(rnd)
        steps = torch.full((len(rnd.clients),), rnd.const, dtype=torch.long)  # CPU: the engines read the counts on the host
        return LocalObjective(linear=server["c"][None, :] / w_k[:, None] - rnd.rows["c"], steps=steps)

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        k_lr = rnd.steps.to(thetas.device, thetas.dtype)[:, None] * self.c_lr(rnd)
        return {"c": rnd.rows["c"] - server["c"][None, :] + (rnd.theta[None, :] - thetas) / k_lr}

    def server_update(self, rnd, server, thetas, new_rows):
        w_k = self.c_weights(rnd)
        c = server["c"] + (w_k[:, None] * (new_rows["c"] - rnd.rows["c"])).sum(0) / rnd.ctx.num_clients
        new_theta = self.server_lr * thetas.mean(0) + (1.0 - self.server_lr) * rnd.theta
        return new_theta, {**server, "c": c}


@dataclass(frozen=True)
class ScaffoldPaper(Scaffold):
    """Algorithm 1 as printed: unscaled c, the c_k update divides by this round's lr."""

    def c_weights(self, rnd: Round) -> torch.Tensor:
        return torch.ones_like(rnd.weights, dtype=rnd.theta.dtype)

    def c_lr(self, rnd: Round) -> float:
        return rnd.lr
