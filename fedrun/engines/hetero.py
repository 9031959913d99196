"""Device heterogeneity (``hetero=``): how many local steps each active client really takes.

Without heterogeneity every active client k takes its nominal number of local steps τ⁰_k: E passes
over its own data, E·⌈n_k/B⌉, or the fixed count its algorithm asks for (SCAFFOLD's K,
``LocalObjective.steps``). A heterogeneity model turns τ⁰_k into the steps τ_k the client takes in
this round; the engines then run exactly τ_k steps (the batch schedule's first τ_k batches,
:func:`~fedrun.engines.base.batch_schedule`, passing over the data as often as needed), both engines
alike. The modes:

* ``none`` (:class:`NoHeterogeneity`): τ_k = τ⁰_k, nothing drawn (the runs of before, bit for bit);
* ``uniform_epochs`` (:class:`UniformEpochs`): each active client draws e_k uniformly from the
  integers in [low, high] (default [1, E]) every round and takes τ_k = max(1, ⌊τ⁰_k·e_k/E⌋) steps
  (e_k passes; FedNova's random-epochs experiments, JYWa/FedNova ``train_LocalSGD.py``, whose
  ``np.random.randint(low=2, high=localE)`` is [2, E−1]: ``hetero.low=2 hetero.high=E-1``);
* ``stragglers`` (:class:`Stragglers`): round(fraction·A) of the round's A active clients, chosen
  uniformly, are stragglers and take τ_k = max(1, ⌊s_k·τ⁰_k⌋) steps with s_k uniform in
  [min_work, 1) (the FedProx paper's systems heterogeneity); ``drop=true`` discards the stragglers'
  updates instead (FedAvg in that paper), counted in ``straggler_drops``;
* ``speeds`` (:class:`Speeds`): client k has a speed v_k = exp(sigma·z_k), z_k ~ N(0, 1), fixed for
  the run (median 1), and takes τ_k = max(1, round(v_k·τ⁰_k)) steps every round (round half to even).

Every draw comes from its own stream: the round's from ``generator(seed, "hetero", round)`` over the
active clients in id order, a client's speed from ``generator(seed, "hetero", 0, k)``. So at one seed
every algorithm (they all see the same active clients) and both engines see the same work per client
and round, nothing depends on which clients another round chose, a resumed run draws what an
uninterrupted one would, and nothing is drawn for the clients who are not active (a million-device
run pays for ten).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Optional

import torch

from fedrun.config.bounds import AT_LEAST_1, Bound
from fedrun.errors import FedrunError
from fedrun.seeding import generator

FRACTION = Bound(0, 1, what="a fraction in [0, 1]")
SHARE = Bound(0, 1, what="a share of the local steps in [0, 1)")
SPREAD = Bound(0, 5, what="a lognormal spread in [0, 5]")


@dataclass(frozen=True)
class Work:
    """One round's work: local steps per active client, and which updates are discarded."""

    steps: torch.Tensor  # [A] int64, >= 1
    dropped: torch.Tensor  # [A] bool: stragglers whose update the server does not receive (drop=true)


def nominal_steps(fixed: Optional[torch.Tensor], sizes: torch.Tensor, epochs: int, batch_size: int) -> torch.Tensor:
    """τ⁰ [A]: the algorithm's fixed step counts when it has them, else E·⌈n_k/B⌉ (int64, on the CPU)."""
    if fixed is not None:
        return fixed.detach().long().cpu()
    return epochs * ((sizes.detach().long().cpu() + batch_size - 1) // batch_size)


class Heterogeneity:
    """The interface: :meth:`work` of a round, or None when every client takes its nominal steps."""

    def work(self, nominal: torch.Tensor, clients: torch.Tensor, epochs: int, seed: int, round_idx: int) -> Optional[Work]:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """False when the model never changes the nominal steps (``hetero=none``)."""
        return True


@dataclass(frozen=True)
class NoHeterogeneity(Heterogeneity):
    """Every client takes its nominal steps (``hetero=none``, the default)."""

    def work(self, nominal, clients, epochs, seed, round_idx) -> Optional[Work]:
        return None

    @property
    def active(self) -> bool:
        return False


def _none_dropped(count: int) -> torch.Tensor:
    return torch.zeros(count, dtype=torch.bool)


@dataclass(frozen=True)
class UniformEpochs(Heterogeneity):
    """e_k uniform in {low, ..., high} (high null: E) each round; τ_k = max(1, ⌊τ⁰_k·e_k/E⌋)."""

    low: Annotated[int, AT_LEAST_1] = 1
    high: Annotated[Optional[int], AT_LEAST_1] = None

    def epochs_of(self, count: int, epochs: int, seed: int, round_idx: int) -> torch.Tensor:
        """[count] the active clients' epochs this round (in client-id order)."""
        high = epochs if self.high is None else int(self.high)
        if not 1 <= self.low <= high:
            raise FedrunError(
                f"hetero.low={self.low} and hetero.high={high} give no epochs: use 1 <= hetero.low <= hetero.high "
                "(hetero.high=null is local_epochs)."
            )
        return torch.randint(self.low, high + 1, (count,), generator=generator(seed, "hetero", round_idx))

    def work(self, nominal, clients, epochs, seed, round_idx) -> Work:
        e = self.epochs_of(len(nominal), epochs, seed, round_idx)
        return Work((nominal * e // epochs).clamp(min=1), _none_dropped(len(nominal)))


@dataclass(frozen=True)
class Stragglers(Heterogeneity):
    """round(fraction·A) stragglers per round do max(1, ⌊s·τ⁰⌋) steps, s uniform in [min_work, 1)."""

    fraction: Annotated[float, FRACTION] = 0.5
    min_work: Annotated[float, SHARE] = 0.1
    drop: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_work < 1:
            raise FedrunError(f"hetero.min_work={self.min_work} is not in [0, 1): use the smallest share of the local steps a straggler does.")

    def draws(self, count: int, seed: int, round_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(straggler mask [count], share [count] float64) of a round: a permutation picks the
        stragglers (its first round(fraction·count) positions), then one uniform per client."""
        g = generator(seed, "hetero", round_idx)
        chosen = torch.randperm(count, generator=g)[: math.floor(self.fraction * count + 0.5)]
        share = self.min_work + (1.0 - self.min_work) * torch.rand(count, generator=g, dtype=torch.float64)
        mask = torch.zeros(count, dtype=torch.bool)
        mask[chosen] = True
        return mask, share

    def work(self, nominal, clients, epochs, seed, round_idx) -> Work:
        mask, share = self.draws(len(nominal), seed, round_idx)
        partial = (share * nominal.double()).floor().long().clamp(min=1)
        steps = torch.where(mask, partial, nominal)
        return Work(steps, mask.clone() if self.drop else _none_dropped(len(nominal)))


@dataclass(frozen=True)
class Speeds(Heterogeneity):
    """Client k's fixed speed v_k = exp(sigma·z_k); τ_k = max(1, round(v_k·τ⁰_k)) every round."""

    sigma: Annotated[float, SPREAD] = 0.5

    def speeds_of(self, clients: torch.Tensor, seed: int) -> torch.Tensor:
        """[A] float64 speeds of ``clients``: one normal from each client's own generator."""
        z = torch.cat([torch.randn(1, generator=generator(seed, "hetero", 0, k), dtype=torch.float64) for k in clients.tolist()])
        return torch.exp(self.sigma * z) if len(z) else z

    def work(self, nominal, clients, epochs, seed, round_idx) -> Work:
        v = self.speeds_of(clients, seed)
        return Work(torch.round(v * nominal.double()).long().clamp(min=1), _none_dropped(len(nominal)))


def discard(kept, clients: torch.Tensor, work: Optional[Work]):
    """``kept`` (the guard's screened clients, a dataclass with rows aligned to ``kept.clients``)
    without the clients whose update ``work`` discards, and how many were discarded."""
    if work is None or not bool(work.dropped.any()):
        return kept, 0
    gone = clients.cpu()[work.dropped]
    stay = ~torch.isin(kept.clients.cpu(), gone)
    on = lambda t: t[stay.to(t.device)]  # noqa: E731
    return replace(kept, clients=on(kept.clients), thetas=on(kept.thetas), loss=on(kept.loss.reshape(-1)), steps=on(kept.steps)), int((~stay).sum())


def columns(node) -> list[str]:
    """The metrics columns a ``hetero`` config node adds: none for ``hetero=none``."""
    if node is None or str(node.get("_target_", "")).endswith(".NoHeterogeneity"):
        return []
    return ["mean_local_steps"] + (["straggler_drops"] if node.get("drop", False) else [])
