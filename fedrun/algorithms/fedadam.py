"""FedAdam, FedYogi, FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2) and server SGD (the same paper's FedAvg with a server learning rate).

Clients run plain local SGD on their loss (as FedAvg). The server treats the unweighted mean of the
active clients' updates as a pseudo-gradient,

    Δ_t = (1/|P_t|) Σ_{k∈P_t} (θ_k^t − θ^{t−1}),

and takes one adaptive step on it, without bias correction (as Algorithm 2):

    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = v_{t−1} + Δ_t²                                     (FedAdagrad, ``algo=fedadagrad``)
    v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)       (FedYogi, ``algo=fedyogi``)
    v_t = β2 v_{t−1} + (1 − β2) Δ_t²                          (FedAdam, ``algo=fedadam``)
    θ^t = θ^{t−1} + η m_t / (√v_t + τ)

with m_{−1} = 0 and v_{−1} = τ² (Algorithm 2 asks for v_{−1} ≥ τ²); η = ``server_lr``.
``algo=fedopt_sgd`` is plain server SGD, θ^t = (1 − η) θ^{t−1} + η·mean_{P_t} θ_k^t (η = 1 is the
unweighted mean of the active models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fedrun.algorithms.base import Algorithm, Round, ServerState
from fedrun.errors import FedrunError


def _positive(key: str, value: float, hint: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise FedrunError(f"algo.{key}={value} is not a positive number: use {hint}.")


def _decay(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise FedrunError(f"algo.{key}={value} is out of range: use a decay rate in [0, 1).")


@dataclass(frozen=True)
class FedOptSGD(Algorithm):
    """Server SGD on the pseudo-gradient: θ^t = (1 − η) θ^{t−1} + η·mean_{P_t} θ_k^t."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr, "a server learning rate > 0 (e.g. algo.server_lr=0.01)")

    def server_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor, new_rows) -> tuple[torch.Tensor, ServerState]:
        return (1.0 - self.server_lr) * rnd.theta + self.server_lr * thetas.mean(0), server


@dataclass(frozen=True)
class FedAdagrad(Algorithm):
    """Algorithm 2 with the first moment m_t and the second-moment rule :meth:`second_moment`."""

    server_lr: float = 0.01
    beta1: float = 0.9
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr, "a server learning rate > 0 (e.g. algo.server_lr=0.01)")
        _decay("beta1", self.beta1)
        _positive("tau", self.tau, "an adaptivity constant tau > 0 (e.g. algo.tau=0.001)")

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {"m": torch.zeros_like(theta), "v": torch.full_like(theta, self.tau**2)}

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return v + delta.square()

    def server_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor, new_rows) -> tuple[torch.Tensor, ServerState]:
        delta = thetas.mean(0) - rnd.theta
        m = self.beta1 * server["m"] + (1.0 - self.beta1) * delta
        v = self.second_moment(server["v"], delta)
        return rnd.theta + self.server_lr * m / (v.sqrt() + self.tau), {**server, "m": m, "v": v}


@dataclass(frozen=True)
class FedYogi(FedAdagrad):
    beta2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        _decay("beta2", self.beta2)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        d2 = delta.square()
        return v - (1.0 - self.beta2) * d2 * torch.sign(v - d2)


@dataclass(frozen=True)
class FedAdam(FedYogi):
    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * delta.square()
