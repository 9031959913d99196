"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1).

Local objective: the client's cross-entropy only. Server: the n_k-weighted mean of the active
clients' models, θ^t = Σ_{k∈P_t} n_k θ_k^t / Σ_{k∈P_t} n_k (as in the FedDyn reference code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrun.algorithms.base import Algorithm, RoundInfo, ServerState, weighted_mean
from fedrun.state import ClientStateStore


@dataclass
class FedAvg(Algorithm):
    def server_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        new_states: dict[str, torch.Tensor],
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> tuple[torch.Tensor, ServerState]:
        sizes = self.ctx.client_sizes.to(client_thetas.device)[info.clients]
        return weighted_mean(client_thetas, sizes), server
