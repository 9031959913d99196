"""The algorithm interface shared by every federated method and both engines.

An algorithm is a frozen dataclass of its hyperparameters (its Hydra schema is generated from the
fields, :mod:`fedrun.config.schema`) and pure vector arithmetic over flat parameters (:mod:`fedrun.models.params`).
It never sees the client-state store: once per round the runner reads the active clients' old rows of
every table in :attr:`Algorithm.client_states` and hands the algorithm one frozen :class:`Round`.

* :meth:`Algorithm.setup` - derived constants of the run (returned, frozen; ``Round.const``);
* :meth:`Algorithm.initial_server` - the initial server state (a dict of tensors, checkpointed);
* :meth:`Algorithm.local_objective` - the extra terms of each active client's local loss, as a
  :class:`LocalObjective` of stacked tensors (row a = active client a), optionally with a
  :class:`LocalHook` that changes the local step itself (SAM-style methods, :mod:`.sam`);
* :meth:`Algorithm.client_update` - the new state rows ``{table: [A, P]}`` of the active clients;
* :meth:`Algorithm.server_update` - the new server model and server state; the old rows are still
  in ``Round.rows`` (SCAFFOLD's server needs c_k⁺ − c_k).

The runner writes the returned rows at the clients' ids after :meth:`server_update`. The engines run
local training (plain SGD, gradient-norm clip, weight decay, E epochs of batches of B, as the FedDyn
reference code) for all active clients, sequentially or at once, and know nothing about the
algorithm beyond the :class:`LocalObjective`. A new method is one file here and one ``conf/algo/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch

ServerState = dict[str, torch.Tensor]
# grad_fn(w, extra) -> (cross-entropy [A], gradient [A, P]) on the step's batch at stacked parameters
# w [A, P]; the gradient includes the objective's extra terms when ``extra`` (weight decay never).
GradFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class LocalHook:
    """Changes the local step of the active clients (one object per round, made by the algorithm).

    Both engines call :meth:`gradient` at every local step instead of taking ``grad_fn(w)``; the
    vectorised engine once per step for all clients of a chunk. ``objective`` is the chunk's
    :class:`LocalObjective`: its ``hook_rows`` (a slice) selects the chunk's clients among the round's
    active clients, so a hook can read and update per-client tensors it holds (e.g. rows of its
    algorithm's state from ``Round.rows``), and its :meth:`LocalObjective.extra_grad` gives the extra
    terms' gradient at any point. ``active`` ([A', 1] bool, or None when all are) marks the clients
    that really take this step (the vectorised engine pads shorter schedules; a padded client's step
    is discarded, so a hook must leave its per-client state alone). :meth:`result` is read after
    training: per-client tensors ``{name: [A, P]}`` that :meth:`Algorithm.client_update` finds in
    ``Round.local``.
    """

    def gradient(
        self, grad_fn: GradFn, w: torch.Tensor, objective: "LocalObjective", active: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy [A'], gradient [A', P]) of this step, before clipping and weight decay."""
        return grad_fn(w)

    def result(self) -> dict[str, torch.Tensor]:
        return {}


@dataclass
class LocalObjective:
    """Extra terms of the local objective of the active clients (row a = active client a).

    For client a with parameters w the engines minimise

        CE_a(w) + <w, linear[a]> + (prox[a] / 2) * ||w - anchor||^2

    with gradient-norm clipping applied to the gradient of that whole loss, and then add
    ``(weight_decay + decay[a]) * w`` to the clipped gradient before the SGD step (torch's
    ``SGD(weight_decay=...)``, which escapes the clip). ``steps[a]``, when given, fixes the number of
    local steps (SCAFFOLD) instead of ``local_epochs`` passes over the client's data. ``hook``, when
    given, computes each step's gradient (:class:`LocalHook`) for the active clients ``hook_rows``.
    """

    linear: Optional[torch.Tensor] = None  # [A, P]
    prox: Optional[torch.Tensor] = None  # [A]
    anchor: Optional[torch.Tensor] = None  # [P] or [A, P]
    decay: Optional[torch.Tensor] = None  # [A]
    steps: Optional[torch.Tensor] = None  # [A] int64 on the CPU (the engines read the counts on the host)
    hook: Optional[LocalHook] = None
    hook_rows: slice = field(default_factory=lambda: slice(None))

    def rows(self, index: slice) -> "LocalObjective":
        """The objective of a contiguous subset of the active clients (chunked or sequential training)."""

        def pick(t: Optional[torch.Tensor], stacked: bool = True) -> Optional[torch.Tensor]:
            if t is None or (not stacked and t.dim() == 1):
                return t
            return t[index]

        return LocalObjective(
            pick(self.linear), pick(self.prox), pick(self.anchor, stacked=False), pick(self.decay), pick(self.steps),
            self.hook, index,
        )

    @property
    def has_extra(self) -> bool:
        return self.linear is not None or self.prox is not None

    def extra_loss(self, w: torch.Tensor) -> torch.Tensor:
        """Sum over clients of ``<w, linear> + prox/2 ||w - anchor||^2`` for stacked ``w`` [A, P]."""
        loss = w.new_zeros(())
        if self.linear is not None:
            loss = loss + (w * self.linear).sum()
        if self.prox is not None:
            loss = loss + 0.5 * (self.prox * (w - self.anchor).pow(2).sum(-1)).sum()
        return loss

    def extra_grad(self, w: torch.Tensor) -> torch.Tensor:
        """The gradient of :meth:`extra_loss` at ``w`` [A, P]: ``linear + prox * (w - anchor)``.

        It is affine in w, so the vectorised engine takes ``extra_grad(0)`` once per chunk and adds
        ``prox * w`` per step (:meth:`affine_parts`); tests check it against autograd of the loss.
        """
        grad = torch.zeros_like(w) if self.linear is None else self.linear
        if self.prox is not None:
            grad = grad + self.prox.reshape(-1, 1) * (w - self.anchor)
        return grad

    def affine_parts(self, like: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(extra_grad(0) [A, P], prox [A, 1] or None)``: extra_grad(w) = const + prox * w."""
        prox = None if self.prox is None else self.prox.reshape(-1, 1).to(like.dtype)
        return self.extra_grad(torch.zeros_like(like)), prox

    def step_gradient(
        self, grad_fn: GradFn, w: torch.Tensor, active: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (cross-entropy, gradient): the hook's when there is one, else ``grad_fn(w)``."""
        if self.hook is None:
            return grad_fn(w)
        return self.hook.gradient(grad_fn, w, self, active)


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
class Round:
    """Everything an algorithm may know about one round (row a of every [A, ...] = ``clients[a]``)."""

    index: int  # 1-based
    lr: float  # this round's local learning rate, lr · decay^(index-1)
    base_lr: float  # the configured (round-1) lr; SCAFFOLD's reference c update divides by it
    theta: torch.Tensor  # [P] the server model the clients start from
    clients: torch.Tensor  # [A] sorted active client ids, on the device
    rows: Mapping[str, torch.Tensor]  # {table: [A, P]} the active clients' rows before this round
    sizes: torch.Tensor  # [A] int64 n_k
    weights: torch.Tensor  # [A] w_k = n_k · m / N
    ctx: FedContext
    const: Any = None  # what Algorithm.setup returned
    steps: Optional[torch.Tensor] = None  # [A] local SGD steps taken (after training)
    local: Mapping[str, torch.Tensor] = field(default_factory=dict)  # LocalHook.result() (after training)

    def finished(self, kept: torch.Tensor, steps: torch.Tensor, local: Mapping[str, torch.Tensor]) -> "Round":
        """This round after training, restricted to the clients ``kept`` (a sorted subset)."""
        if len(kept) == len(self.clients):
            return replace(self, steps=steps.to(self.clients.device), local=dict(local))
        mask = torch.isin(self.clients, kept.to(self.clients.device))
        pick = lambda t: t[mask.to(t.device)]  # noqa: E731
        return replace(
            self, clients=self.clients[mask], rows={k: pick(v) for k, v in self.rows.items()},
            sizes=pick(self.sizes), weights=pick(self.weights), steps=steps.to(self.clients.device),
            local={k: pick(v) for k, v in local.items()},
        )


@dataclass(frozen=True)
class Algorithm:
    """Base class; subclasses are frozen dataclasses of hyperparameters.

    ``client_states``: names of the ``[m, P]`` tables this algorithm keeps per client (zeros at start).
    ``uplink``/``downlink``: parameter-sized vectors sent per active client each way per round.
    """

    client_states: ClassVar[tuple[str, ...]] = ()
    uplink: ClassVar[int] = 1
    downlink: ClassVar[int] = 1
    weighted: ClassVar[bool] = False  # average client models by n_k (FedAvg, FedProx) or plainly

    def average(self, thetas: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """The mean of the models ``thetas`` of clients with sizes ``sizes``: n_k-weighted when :attr:`weighted`.

        As in the FedDyn reference code, the same averaging gives FedAvg's and FedProx's server model
        and, for every method, the evaluated "mean of the active models" and "mean of all models".
        """
        if not self.weighted:
            return thetas.mean(0)
        return weighted_mean(thetas, sizes.to(thetas.device))

    def all_weights(self, ctx: FedContext) -> torch.Tensor:
        """[m] weights (summing to 1) of every client's latest model in the "mean of all models"."""
        if not self.weighted:
            return torch.full((ctx.num_clients,), 1.0 / ctx.num_clients, device=ctx.device)
        sizes = ctx.client_sizes.double()
        return (sizes / sizes.sum()).float().to(ctx.device)

    def setup(self, ctx: FedContext) -> Any:
        """Constants derived from the run's facts, passed back as ``Round.const`` (default: none)."""
        return None

    def initial_server(self, theta: torch.Tensor, const: Any) -> ServerState:
        return {}

    def local_objective(self, rnd: Round, server: ServerState) -> LocalObjective:
        return LocalObjective()

    def client_update(self, rnd: Round, server: ServerState, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        """New rows ``{table: [A, P]}`` of the active clients' state from their models ``thetas`` [A, P]."""
        return {}

    def server_update(
        self, rnd: Round, server: ServerState, thetas: torch.Tensor, new_rows: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ServerState]:
        """New server model and state; ``rnd.rows`` still holds the active clients' old rows."""
        raise NotImplementedError


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_a weights[a] · rows[a] / Σ_a weights[a]."""
    weights = weights.to(rows.dtype)
    return (weights[:, None] * rows).sum(0) / weights.sum()
