"""The evaluated "mean of all models": every client's latest model, averaged (``eval_all``).

As in the FedDyn reference code, each client's latest local model (the server model for a client
that has not trained yet) is kept, and their mean is evaluated beside the server model, weighted
as the algorithm averages (:meth:`~fedrun.algorithms.base.Algorithm.all_weights`). Each latest model
is stored as its change from the initial model in the client-state table ``_latest_delta`` (zeros
until a client first trains, so an mmap table stays a sparse file), and the mean is updated by the
active clients' changes each round. The initial model and the mean are checkpointed
(:meth:`state_dict`), the table with the other client-state tables.
"""

from __future__ import annotations

from typing import Any

import torch

TABLE = "_latest_delta"


class AllModelsMean:
    def __init__(self, store: Any, theta: torch.Tensor, weights: torch.Tensor):
        store.add(TABLE)
        self.store = store
        self.weights = weights  # [m], summing to 1
        self.initial = theta.clone()
        self.mean = theta.clone()

    def update(self, clients: torch.Tensor, thetas: torch.Tensor) -> None:
        """The active ``clients``' latest models are now ``thetas`` [A, P]."""
        old = self.store.get(TABLE, clients)
        new = thetas - self.initial
        weights = self.weights[clients.to(self.weights.device)].to(new.dtype)
        self.mean += (weights[:, None] * (new - old)).sum(0)
        self.store.set(TABLE, clients, new)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"initial": self.initial, "mean": self.mean}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.initial = state["initial"].to(self.initial.device).clone()
        self.mean = state["mean"].to(self.mean.device).clone()
