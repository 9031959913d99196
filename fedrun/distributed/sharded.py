"""The client-state store and the engine of one rank of a multi-process run (:mod:`fedrun.distributed`).

:class:`ShardedStore` looks like a :class:`~fedrun.state.store.ClientStateStore` indexed by global client
id, but holds only the rows of the clients this rank owns (``id mod N == rank``, row ``id // N`` of
an inner store of the rank's size, placed by the single-process rule). Reads are collective: every
rank calls :meth:`ShardedStore.get` with the same ids (the round's control flow is the same on every
rank), each contributes the rows it owns and all get the full rows, exactly. Writes are local: every
rank is given all rows and keeps its own.

:class:`ShardedEngine` trains the active clients this rank owns through the configured engine
(vectorised or sequential) and gathers every rank's results into the round's full result, in the
order of the active list. Any error during training is agreed on by all ranks before they go on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch

from fedrun import distributed
from fedrun.distributed import Ranks
from fedrun.algorithms.base import LocalHook
from fedrun.engines.base import Engine, LocalResult
from fedrun.errors import FedrunError
from fedrun.state.store import ClientStateStore, store_for_run


def store_for_rank(spec: Any, data: Any, model: Any, algorithm: Any, device: torch.device, ranks: Ranks) -> "ShardedStore":
    """This rank's store: its clients' rows, placed by the single-process rule applied to its own
    number of clients (:func:`fedrun.state.store.store_for_run`; mmap files are per-rank scratch files,
    checkpoints copy the shard)."""
    m, p = spec.num_clients, spec.placement
    if m < ranks.size:
        raise FedrunError(f"num_clients={m} is fewer than the {ranks.size} ranks: start at most {m} ranks (--nproc-per-node).")
    tables = len(algorithm.client_states) + int(spec.evaluation.all)
    inner = store_for_run(p.requested, ranks.shard_size(m), p.participation, p.batch_size, tables, data, model, device)
    return ShardedStore(ranks, m, inner)


class ShardedStore:
    """``[m, P]`` tables by global client id, of which this rank keeps only its own rows (``inner``)."""

    def __init__(self, ranks: Ranks, num_clients: int, inner: ClientStateStore):
        if inner.num_clients != ranks.shard_size(num_clients):
            raise ValueError(f"rank {ranks.rank} owns {ranks.shard_size(num_clients)} clients, the store has {inner.num_clients} rows")
        self.ranks = ranks
        self.num_clients = num_clients
        self.inner = inner
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (ids, gathered rows) until the next set

    # what the runner and the checkpoint code read from a store
    num_params = property(lambda self: self.inner.num_params)
    device = property(lambda self: self.inner.device)
    placement = "sharded"
    durable = False  # a checkpoint copies each rank's shard into that rank's shard file

    def add(self, name: str, init: Optional[torch.Tensor] = None) -> None:
        self.inner.add(name, init)

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def get(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Collective: rows of ``name`` for client ``ids`` (any owners), the same on every rank."""
        cached = self._cache.get(name)
        if cached is not None and cached[0].shape == ids.shape and torch.equal(cached[0], ids.to(cached[0].device)):
            return cached[1].clone()
        ids_cpu = ids.to("cpu", torch.long)
        own = self.ranks.owned(ids_cpu)
        rows = self.inner.get(name, self.ranks.local_rows(ids_cpu[own]))
        full = distributed.gather_rows(self.ranks, rows, ids_cpu).to(self.device)
        self._cache[name] = (ids.clone(), full)
        return full.clone()

    def set(self, name: str, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Write the rows of the clients this rank owns (``rows`` holds every id's row)."""
        ids_cpu = ids.to("cpu", torch.long)
        own = self.ranks.owned(ids_cpu)
        self._cache.pop(name, None)
        if len(own):
            self.inner.set(name, self.ranks.local_rows(ids_cpu[own]), rows[own.to(rows.device)])

    def snapshot(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` keeps: the number of ranks; each rank's rows go to its shard file
        (:mod:`fedrun.rundir.ranked`)."""
        return {"placement": self.placement, "ranks": self.ranks.size}

    def committed(self, snapshot: dict[str, Any]) -> None:
        """The checkpoint is durable (the shard's own store was told by the shard's writer)."""

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("ranks") != self.ranks.size:
            raise ValueError(f"a checkpoint of {snapshot.get('ranks')} ranks cannot restore {self.ranks.size}")  # refused earlier

    def shard(self) -> dict[str, Any]:
        """This rank's rows of every table (row i = client ``rank + i·N``): its store's snapshot."""
        return self.inner.snapshot()

    def load_shard(self, snapshot: dict[str, Any]) -> None:
        self._cache.clear()
        self.inner.restore(snapshot)

    def owned_ids(self) -> torch.Tensor:
        """The global ids of this rank's rows, in row order."""
        return torch.arange(self.ranks.rank, self.num_clients, self.ranks.size)


@dataclass
class ShardedEngine(Engine):
    """Trains this rank's share of the active clients with ``inner`` and gathers the full result."""

    inner: Engine
    ranks: Ranks

    def __getattr__(self, name: str) -> Any:  # engine options (chunk_size, gradient, ...) read through
        if name in ("inner", "ranks"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def train(self, model, theta, data, partition, clients, objective, hp, seed, round_idx) -> LocalResult:  # noqa: ANN001
        distributed.set_round(round_idx)
        own = self.ranks.owned(clients.cpu()).to(clients.device)
        error: Optional[BaseException] = None
        part: Optional[LocalResult] = None
        try:
            if len(own):
                mine = objective.rows(own)
                if objective.hook is not None:
                    mine.hook = _OwnRows(objective.hook, own)
                part = self.inner.train(model, theta, data, partition, clients[own], mine, hp, seed, round_idx)
        except Exception as err:  # noqa: BLE001 - agreed on below, then raised on every rank
            error = err
        distributed.agree(self.ranks, error)
        if part is None:
            part = LocalResult(
                theta.new_empty((0, theta.numel())), theta.new_empty((0,)), torch.empty(0, dtype=torch.long)
            )
        clients_cpu = clients.cpu()
        # models and losses in one all-gather ([A, P + 1] float32), step counts in another (int64)
        packed = torch.cat([part.thetas, part.loss.reshape(-1, 1).to(part.thetas)], dim=1)
        full = distributed.gather_rows(self.ranks, packed, clients_cpu)
        steps = distributed.gather_rows(self.ranks, part.steps.reshape(-1, 1), clients_cpu).reshape(-1)
        if objective.hook is not None:  # the hook's per-client results: this rank filled its own rows
            local = {name: distributed.gather_rows(self.ranks, rows[own], clients_cpu) for name, rows in sorted(objective.hook.result().items())}
            objective.hook = _Gathered(objective.hook, local)  # what the runner reads after training
        return LocalResult(full[:, :-1].contiguous(), full[:, -1].contiguous(), steps)


@dataclass(frozen=True)
class _OwnRows(LocalHook):
    """The round's hook seen through this rank's share: the engines' ``hook_rows`` (positions among the
    rank's clients) become positions among all the round's active clients, which the hook's own
    per-client tensors are indexed by."""

    inner: LocalHook
    own: torch.Tensor  # positions of this rank's clients among the active clients

    def gradient(self, grad_fn, w, objective, active):  # noqa: ANN001
        rows = self.own[objective.hook_rows]
        return self.inner.gradient(grad_fn, w, replace(objective, hook=self.inner, hook_rows=rows), active)


@dataclass(frozen=True)
class _Gathered(LocalHook):
    """The round's hook after training, with every rank's rows of its per-client results."""

    inner: LocalHook
    local: dict[str, torch.Tensor]

    def gradient(self, grad_fn, w, objective, active):  # noqa: ANN001
        return self.inner.gradient(grad_fn, w, objective, active)

    def result(self) -> dict[str, torch.Tensor]:
        return self.local
