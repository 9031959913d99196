"""FedSpeed (Sun et al., "FedSpeed: Larger Local Interval, Less Communication Round, and Higher
Generalization Accuracy", ICLR 2023, Algorithm 1), as the authors' code (woodenchild95/FL-Simulator,
``client/fedspeed.py``, ``optimizer/ESAM.py``, ``server/FedSpeed.py``).

State: h_k per client (table ``"h"``, zeros). Each local step on a batch (:class:`SpeedHook`):

    g = ∇CE(w);  e = ρ·g/(‖g‖ + 1e-7);  step gradient ∇CE(w + e) + λ(h_k − θ)  (clipped),

then the SGD step with weight decay ``weight_decay + λ`` (λw outside the clip). After training
h_k ← h_k + (θ_k − θ); the server sets θ ← mean_{k∈P_t} θ_k + mean over ALL m clients of h_k: FedDyn's
reference server with one α = λ for every client. The code's λ multiplies (the paper's 1/λ) and it uses
only the perturbed gradient (the paper's merge α = 1): docs/algorithms.md, "FedSpeed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from fedrun.algorithms.base import Algorithm, GradFn, LocalHook, LocalObjective, Round, ServerState
from fedrun.algorithms.sam import ascent
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class SpeedHook(LocalHook):
    """ESAM's step: the ascent direction from the cross-entropy alone, the extra terms at w."""

    rho: float

    def gradient(
        self, grad_fn: GradFn, w: torch.Tensor, objective: LocalObjective, active: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, g = grad_fn(w, False)
        _, grad = grad_fn(w + ascent(g, self.rho), True)
        return loss, grad


@dataclass(frozen=True)
class FedSpeed(Algorithm):
    lamb: float = 0.1
    rho: float = 0.1

    client_states: ClassVar[tuple[str, ...]] = ("h",)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lamb) and self.lamb > 0):
            raise FedrunError(f"algo.lamb={self.lamb} is not a positive number: use a prox coefficient > 0 (0.1 = the authors' code).")
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise FedrunError(f"algo.rho={self.rho} is not a number >= 0: use a SAM radius >= 0 (0.1 = the authors' code).")

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"h_mean": torch.zeros_like(theta)}

    def hook(self, rnd: Round, server: ServerState) -> LocalHook:
        return SpeedHook(self.rho)

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        decay = torch.full((len(rnd.clients),), self.lamb, device=rnd.theta.device, dtype=rnd.theta.dtype)
        linear = self.lamb * (rnd.rows["h"] - rnd.theta[None, :])
        return LocalObjective(linear=linear, decay=decay, hook=self.hook(rnd, server))

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": rnd.rows["h"] + (thetas - rnd.theta[None, :])}

    def server_update(self, rnd, server, thetas, new_rows):
        h_mean = server["h_mean"] + (new_rows["h"] - rnd.rows["h"]).sum(0) / rnd.ctx.num_clients
        return thetas.mean(0) + h_mean, {**server, "h_mean": h_mean}
