"""FedDC (Gao et al., "FedDC: Federated Learning with Non-IID Data via Local Drift Decoupling and
Correction", CVPR 2022, Algorithm 1), as the authors' code (gaoliang13/FedDC, ``train_FedDC``).

State: the local drift h_k and the correction state G_k per client (tables ``"h"``, ``"G"``), G at the
server, all zero at start; w_k = n_k·m/N, α_k = α/w_k, K = E·⌈(N/m)/B⌉ (the mean client's steps).

* local loss CE + (α_k/2)‖w − (θ − h_k)‖² + ⟨w, G/w_k − G_k⟩, both terms inside the clip; each
  client takes E passes over its own data;
* h_k ← h_k + (θ_k − θ);  G_k⁺ = G_k − G/w_k − (θ_k − θ)/(K·η₀), η₀ the configured learning rate;
* G ← G + Σ_{k∈P_t} w_k (G_k⁺ − G_k)/m;  θ ← mean_{k∈P_t} θ_k + mean over ALL m clients of h_k
  (kept as ``h_mean``, updated by Σ_{k∈P_t}(θ_k − θ)/m).

Where the code differs from the paper (per-client α_k and G/w_k, the K·η₀ divisor, the mean of h over
all clients): docs/algorithms.md, "FedDC". Model and G travel both ways (2x FedAvg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedrun.algorithms.base import Algorithm, FedContext, LocalObjective, Round, ServerState
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class FedDC(Algorithm):
    alpha: float = 0.01

    client_states: ClassVar[tuple[str, ...]] = ("h", "G")
    uplink: ClassVar[int] = 2
    downlink: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise FedrunError(f"algo.alpha={self.alpha} is not a positive number: use a FedDC alpha > 0 (e.g. algo.alpha=0.01).")

    def setup(self, ctx: FedContext) -> int:
        """K = E * ceil((N/m)/B) in integer arithmetic: the divisor's step count."""
        return ctx.local_epochs * (-(-int(ctx.client_sizes.sum()) // (ctx.num_clients * ctx.batch_size)))

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"G": torch.zeros_like(theta), "h_mean": torch.zeros_like(theta)}

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        w_k = rnd.weights.to(rnd.theta.dtype)[:, None]
        return LocalObjective(
            linear=server["G"][None, :] / w_k - rnd.rows["G"],
            prox=self.alpha / w_k[:, 0],
            anchor=rnd.theta[None, :] - rnd.rows["h"],
        )

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        step = thetas - rnd.theta[None, :]
        w_k = rnd.weights.to(thetas.dtype)[:, None]
        g_new = rnd.rows["G"] - server["G"][None, :] / w_k - step / (rnd.const * rnd.base_lr)
        return {"h": rnd.rows["h"] + step, "G": g_new}

    def server_update(self, rnd, server, thetas, new_rows):
        m = rnd.ctx.num_clients
        w_k = rnd.weights.to(thetas.dtype)[:, None]
        g = server["G"] + (w_k * (new_rows["G"] - rnd.rows["G"])).sum(0) / m
        h_mean = server["h_mean"] + (new_rows["h"] - rnd.rows["h"]).sum(0) / m
        return thetas.mean(0) + h_mean, {**server, "G": g, "h_mean": h_mean}
