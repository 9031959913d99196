"""The per-client state store: one ``[num_clients, num_params]`` tensor per kind of state.

Algorithms declare the kinds they need (FedDyn's gradient state, SCAFFOLD's control variates) and
read or write rows by client id, never by position in the active list. The store is the only place
per-client state lives, so checkpoints, memory estimates and placement (device, pinned host memory,
memory-mapped file) are handled here once for every algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch


class ClientStateStore:
    """Named ``[m, P]`` float32 tables with row access by client id.

    ``placement``: ``device`` keeps tables on the compute device; ``pinned`` in page-locked host
    memory (rows are copied to the device per round); ``mmap`` in files under ``directory``.
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

    def _allocate(self, name: str) -> torch.Tensor:
        shape = (self.num_clients, self.num_params)
        if self.placement == "device":
            return torch.zeros(shape, device=self.device)
        if self.placement == "pinned":
            table = torch.zeros(shape)
            return table.pin_memory() if torch.cuda.is_available() else table
        if self.directory is None:
            raise ValueError("mmap placement needs a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"state_{name}.bin"
        table = torch.from_file(str(path), shared=True, size=shape[0] * shape[1], dtype=torch.float32)
        table.zero_()
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
        return table[ids.to(table.device)].to(self.device, non_blocking=True)

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
        return 4 * num_clients * num_params * num_tables
