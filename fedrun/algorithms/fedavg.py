"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1).

Local objective: the client's cross-entropy only. Server: the n_k-weighted mean of the active
clients' models, θ^t = Σ_{k∈P_t} n_k θ_k^t / Σ_{k∈P_t} n_k (as in the FedDyn reference code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedrun.algorithms.base import Algorithm, Round, ServerState


@dataclass(frozen=True)
class FedAvg(Algorithm):
    weighted: ClassVar[bool] = True

    def server_update(
        self, rnd: Round, server: ServerState, thetas: torch.Tensor, new_rows: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ServerState]:
        return self.average(thetas, rnd.sizes), server
