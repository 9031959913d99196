"""The algorithm interface shared by every federated method and both engines.

An algorithm is three pieces of vector arithmetic over flat parameters (:mod:`fedrun.params`):

1. :meth:`Algorithm.local_objective` - the extra terms of each active client's local loss, as a
   :class:`LocalObjective` of stacked tensors (one row per active client);
2. :meth:`Algorithm.client_update` - the new per-client state rows after local training (returned,
   not written: the runner writes them to the :class:`~fedrun.state.ClientStateStore` at the
   clients' ids after step 3);
3. :meth:`Algorithm.server_update` - the new server model and server state; it sees both the new
   rows and, still in the store, the old ones (SCAFFOLD's server needs c_k⁺ − c_k).

The engines run local training (plain SGD, gradient-norm clip, weight decay, E epochs of batches of
B, as the FedDyn reference code) for all active clients, sequentially or at once, and know nothing
about the algorithm beyond the :class:`LocalObjective`. An algorithm is a dataclass of its
hyperparameters; its Hydra schema is generated from the fields (:mod:`fedrun.config`), so a new
method is one file here and one ``conf/algo/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from fedrun.state import ClientStateStore


@dataclass
class LocalObjective:
    """Extra terms of the local objective of the active clients (row a = active client a).

    For client a with parameters w the engines minimise

        CE_a(w) + <w, linear[a]> + (prox[a] / 2) * ||w - anchor||^2

    with gradient-norm clipping applied to the gradient of that whole loss, and then add
    ``(weight_decay + decay[a]) * w`` to the clipped gradient before the SGD step (torch's
    ``SGD(weight_decay=...)``, which escapes the clip). ``steps[a]``, when given, fixes the number of
    local steps (SCAFFOLD) instead of ``local_epochs`` passes over the client's data.
    """

    linear: Optional[torch.Tensor] = None  # [A, P]
    prox: Optional[torch.Tensor] = None  # [A]
    anchor: Optional[torch.Tensor] = None  # [P] or [A, P]
    decay: Optional[torch.Tensor] = None  # [A]
    steps: Optional[torch.Tensor] = None  # [A] int64

    def rows(self, index: torch.Tensor | slice) -> "LocalObjective":
        """The objective of a subset of the active clients (for chunked or sequential training)."""

        def pick(t: Optional[torch.Tensor], stacked: bool = True) -> Optional[torch.Tensor]:
            if t is None or (not stacked and t.dim() == 1):
                return t
            return t[index]

        return LocalObjective(
            pick(self.linear), pick(self.prox), pick(self.anchor, stacked=False), pick(self.decay), pick(self.steps)
        )

    def extra_loss(self, w: torch.Tensor) -> torch.Tensor:
        """Sum over clients of ``<w, linear> + prox/2 ||w - anchor||^2`` for stacked ``w`` [A, P].

        Computed on the live (autograd-tracked) parameters, so its gradient flows.
        """
        loss = w.new_zeros(())
        if self.linear is not None:
            loss = loss + (w * self.linear).sum()
        if self.prox is not None:
            loss = loss + 0.5 * (self.prox * (w - self.anchor).pow(2).sum(-1)).sum()
        return loss


@dataclass(frozen=True)
class FedContext:
    """Facts fixed for the whole run that algorithms may read."""

    num_clients: int
    num_params: int
    client_sizes: torch.Tensor  # [m] int64, n_k
    batch_size: int
    local_epochs: int
    device: torch.device

    @property
    def weights(self) -> torch.Tensor:
        """w_k = n_k · m / N (mean 1), the reference code's per-client weight."""
        sizes = self.client_sizes.double()
        return (sizes * self.num_clients / sizes.sum()).float().to(self.device)


@dataclass(frozen=True)
class RoundInfo:
    """What an algorithm may know about the current round."""

    round: int  # 1-based
    lr: float  # this round's local learning rate, lr · decay^(round-1)
    clients: torch.Tensor  # sorted active client ids, on the device
    steps: torch.Tensor  # [A] local SGD steps each active client took (filled after training)
    base_lr: Optional[float] = None  # the configured (round-1) lr; SCAFFOLD's reference c update divides by it


ServerState = dict[str, torch.Tensor]


class Algorithm:
    """Base class; subclasses are dataclasses of hyperparameters.

    ``client_states``: names of the ``[m, P]`` tables this algorithm keeps in the store.
    ``uplink``/``downlink``: parameter-sized vectors sent per active client each way per round.
    """

    client_states: ClassVar[tuple[str, ...]] = ()
    uplink: ClassVar[int] = 1
    downlink: ClassVar[int] = 1
    weighted: ClassVar[bool] = False  # average client models by n_k (FedAvg, FedProx) or plainly

    def average(self, thetas: torch.Tensor, clients: torch.Tensor) -> torch.Tensor:
        """The mean of the models ``thetas`` of ``clients``: n_k-weighted when :attr:`weighted`.

        As in the FedDyn reference code, the same averaging gives FedAvg's and FedProx's server model
        and, for every method, the evaluated "mean of the active models" and "mean of all models".
        """
        if not self.weighted:
            return thetas.mean(0)
        return weighted_mean(thetas, self.ctx.client_sizes.to(thetas.device)[clients.to(thetas.device)])

    def all_weights(self) -> torch.Tensor:
        """[m] weights (summing to 1) of every client's latest model in the "mean of all models"."""
        if not self.weighted:
            return torch.full((self.ctx.num_clients,), 1.0 / self.ctx.num_clients, device=self.ctx.device)
        sizes = self.ctx.client_sizes.double()
        return (sizes / sizes.sum()).float().to(self.ctx.device)

    def setup(self, ctx: FedContext, theta: torch.Tensor, store: ClientStateStore) -> ServerState:
        """Create the client-state tables and return the initial server state."""
        self.ctx = ctx
        for name in self.client_states:
            store.add(name)
        return {}

    def local_objective(
        self, theta: torch.Tensor, server: ServerState, store: ClientStateStore, info: RoundInfo
    ) -> LocalObjective:
        return LocalObjective()

    def client_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> dict[str, torch.Tensor]:
        """New rows ``{table: [A, P]}`` of the active clients' state (default: no state)."""
        return {}

    def server_update(
        self,
        theta: torch.Tensor,
        client_thetas: torch.Tensor,
        new_states: dict[str, torch.Tensor],
        server: ServerState,
        store: ClientStateStore,
        info: RoundInfo,
    ) -> tuple[torch.Tensor, ServerState]:
        """New server model and state. ``store`` still holds the active clients' old rows."""
        raise NotImplementedError


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_a weights[a] · rows[a] / Σ_a weights[a]."""
    weights = weights.to(rows.dtype)
    return (weights[:, None] * rows).sum(0) / weights.sum()
