"""The per-client state store: one ``[num_clients, num_params]`` tensor per kind of state.

Algorithms declare the kinds they need (FedDyn's gradient state, SCAFFOLD's control variates) and
read or write rows by client id, never by position in the active list. The store is the only place
per-client state lives, so checkpoints, memory estimates and placement (device, pinned host memory,
memory-mapped file) are handled here once for every algorithm.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from fedrun import memory
from fedrun.config import choice

log = logging.getLogger("fedrun")


class ClientStateStore:
    """Named ``[m, P]`` float32 tables with row access by client id.

    ``placement``: ``device`` keeps tables on the compute device; ``pinned`` in page-locked host
    memory (rows are copied to the device per round; plain host memory when there is no CUDA);
    ``mmap`` in sparse files ``state_<name>.bin`` under ``directory`` (a temporary directory when
    none is given), read and written a round's rows at a time, so the tables may exceed RAM. The
    files are scratch space (checkpoints copy the tables) and are deleted with the store.
    """

    def __init__(
        self,
        num_clients: int,
        num_params: int,
        device: torch.device,
        placement: str = "device",
        directory: Optional[Path] = None,
    ):
        if placement not in ("device", "pinned", "mmap"):
            raise ValueError(f"unknown state placement {placement!r}")
        self.num_clients = num_clients
        self.num_params = num_params
        self.device = torch.device(device)
        self.placement = placement
        self.directory = Path(directory) if directory is not None else None
        self.tables: dict[str, torch.Tensor] = {}
        self.paths: dict[str, Path] = {}
        if placement == "mmap":
            if self.directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix="fedrun-state-"))
                weakref.finalize(self, shutil.rmtree, str(self.directory), True)
            else:
                self.directory.mkdir(parents=True, exist_ok=True)

    def _allocate(self, name: str) -> torch.Tensor:
        shape = (self.num_clients, self.num_params)
        if self.placement == "device":
            return torch.zeros(shape, device=self.device)
        if self.placement == "pinned":
            return torch.zeros(shape, pin_memory=torch.cuda.is_available())
        assert self.directory is not None
        path = self.directory / f"state_{name}.bin"
        with open(path, "wb") as f:  # a sparse file of zeros: nothing is written until rows are set
            f.truncate(memory.BYTES * shape[0] * shape[1])
        weakref.finalize(self, _unlink, path)
        self.paths[name] = path
        table = torch.from_file(str(path), shared=True, size=shape[0] * shape[1], dtype=torch.float32)
        return table.view(shape)

    def add(self, name: str, init: Optional[torch.Tensor] = None) -> None:
        """Create table ``name``: zeros, or every row equal to the vector ``init``."""
        table = self._allocate(name)
        if init is not None:
            table.copy_(init.to(table.device).expand_as(table))
        self.tables[name] = table

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def get(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``name`` for client ``ids``, as a new tensor on the compute device."""
        table = self.tables[name]
        if table.device == self.device:
            return table[ids.to(table.device)]
        ids = ids.to(table.device)
        if self.placement == "pinned" and table.is_pinned():  # gather into pinned memory, copy async
            rows = torch.empty((len(ids), self.num_params), pin_memory=True)
            torch.index_select(table, 0, ids, out=rows)
            return rows.to(self.device, non_blocking=True)
        return table[ids].to(self.device)

    def set(self, name: str, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` (``[len(ids), P]``) at client ``ids``."""
        table = self.tables[name]
        table[ids.to(table.device)] = rows.to(table.device)

    def mean(self, name: str, chunk: int = 4096) -> torch.Tensor:
        """Mean over all clients, accumulated in float64 over chunks (exact enough, any placement)."""
        table = self.tables[name]
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        for start in range(0, self.num_clients, chunk):
            total += table[start : start + chunk].to(self.device).double().sum(0)
        return (total / self.num_clients).float()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.tables.items())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: table.cpu().clone() for name, table in self.tables.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if name not in self.tables:
                self.add(name)
            self.tables[name].copy_(value)

    @staticmethod
    def bytes_needed(num_clients: int, num_params: int, num_tables: int) -> int:
        return memory.state_bytes(num_clients, num_params, num_tables)


def store_for_run(
    cfg: Any, data: Any, model: Any, algorithm: Any, device: torch.device, directory: Optional[Path] = None
) -> ClientStateStore:
    """The run's store, its placement from ``cfg.state_placement`` (``auto``: by estimated size).

    The estimate counts the algorithm's tables (plus ``_latest_model`` when ``eval_all``) against
    the free memory of the device, of the host and of the disk that would hold them, after a
    reserve for local training of the expected active clients (:mod:`fedrun.memory`).
    """
    m, num_params = int(cfg.num_clients), int(model.num_params)
    tables = len(getattr(algorithm, "client_states", ())) + (1 if cfg.get("eval_all", False) else 0)
    requested = cfg.get("state_placement", "auto")
    requested = choice(requested)
    budget = memory.current_budget(device, directory or Path(tempfile.gettempdir()))
    act = memory.activation_bytes_per_sample(model.module, data.x_train[:1])
    per_client = memory.client_training_bytes(num_params, int(cfg.batch_size), act)
    active = max(1, math.ceil(float(cfg.participation) * m))
    training = min(active * per_client, max(per_client, budget.device // 4))
    state = memory.state_bytes(m, num_params, tables)
    placement = memory.choose_placement(requested, state, training, budget, str(device))
    if placement != "device":
        log.info("client state (%s) placed: %s", memory.gib(state), placement)
    return ClientStateStore(m, num_params, device, placement, directory)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
