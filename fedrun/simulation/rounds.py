"""The runner's side of the algorithm interface: a round's old state rows in, its new rows out.

:func:`open_round` reads the active clients' rows of every table of the algorithm once (one read per
table, from memory or a memory-mapped file) into a frozen :class:`~fedrun.algorithms.base.Round`;
:func:`write_rows` writes the rows the algorithm returned at the clients' ids.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrun.algorithms.base import Algorithm, FedContext, Round
from fedrun.state.store import ClientStateStore


def add_tables(algorithm: Algorithm, store: ClientStateStore) -> None:
    for name in algorithm.client_states:
        store.add(name)


def open_round(
    algorithm: Algorithm, ctx: FedContext, const: Any, store: ClientStateStore,
    index: int, lr: float, base_lr: float, theta: torch.Tensor, clients: torch.Tensor,
) -> Round:
    rows = {name: store.get(name, clients) for name in algorithm.client_states}
    sizes = ctx.client_sizes.to(clients.device)[clients]
    weights = ctx.weights.to(clients.device)[clients]
    return Round(index, lr, base_lr, theta, clients, rows, sizes, weights, ctx, const)


def write_rows(store: ClientStateStore, rnd: Round, new_rows: dict[str, torch.Tensor]) -> None:
    for name, rows in new_rows.items():
        store.set(name, rnd.clients, rows)
