"""The per-client state store: one ``[num_clients, num_params]`` float32 table per kind of state.

Algorithms declare the kinds they need (FedDyn's gradient state, SCAFFOLD's control variates) and
read or write rows by client id, never by position in the active list, through the small interface
of :class:`ClientStateStore` (``add``, ``get``, ``set``). Where the tables live is the store's class:

* :class:`TensorStore` keeps them on the compute device, or in page-locked (pinned) host memory
  whose rows are copied to the device per round;
* :class:`MmapStore` keeps them in sparse files, read and written a round's rows at a time, so the
  tables may exceed RAM. Given a directory (a run's ``state/``) the files are durable and journaled
  (:mod:`fedrun.state.journal`); without one they are scratch files deleted with the store.

A checkpoint takes a store's :meth:`~ClientStateStore.snapshot` (a tensor store's tables; a durable
mmap store's files, flushed, by name and journal epoch) and gives it back to :meth:`restore`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from fedrun.errors import writing
from fedrun.state import journal, memory

log = logging.getLogger("fedrun")


class ClientStateStore:
    """Named ``[m, P]`` float32 tables with row access by client id."""

    placement = "device"  # the ``state_placement`` value this store is

    def __init__(self, num_clients: int, num_params: int, device: torch.device):
        self.num_clients = num_clients
        self.num_params = num_params
        self.device = torch.device(device)
        self.tables: dict[str, torch.Tensor] = {}

    def _allocate(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def add(self, name: str, init: Optional[torch.Tensor] = None) -> None:
        """Create table ``name``: zeros, or every row equal to the vector ``init``."""
        table = self._allocate(name)
        if init is not None:
            table.copy_(init.to(table.device).expand_as(table))
        self.tables[name] = table

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.tables.items())

    def get(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``name`` for client ``ids``, as a new tensor on the compute device."""
        table = self.tables[name]
        return table[ids.to(table.device)].to(self.device)

    def set(self, name: str, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` (``[len(ids), P]``) at client ``ids``."""
        table = self.tables[name]
        table[ids.to(table.device)] = rows.to(table.device)

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint keeps of the tables: here the tables themselves."""
        return {"placement": self.placement, "tables": dict(self.tables)}

    def committed(self, snapshot: dict[str, Any]) -> None:
        """The checkpoint holding ``snapshot`` is durable."""

    def restore(self, snapshot: dict[str, Any]) -> None:
        """The tables as ``snapshot`` (of a store of the same kind) holds them."""
        for name, value in snapshot["tables"].items():
            if name not in self.tables:
                self.add(name)
            self.tables[name].copy_(value)


class TensorStore(ClientStateStore):
    """Tables on the compute device, or with ``pinned`` in page-locked host memory (plain host memory
    when there is no CUDA), gathered into pinned memory and copied to the device asynchronously."""

    def __init__(self, num_clients: int, num_params: int, device: torch.device, pinned: bool = False):
        super().__init__(num_clients, num_params, device)
        self.pinned = pinned
        self.placement = "pinned" if pinned else "device"

    def _allocate(self, name: str) -> torch.Tensor:
        shape = (self.num_clients, self.num_params)
        if self.pinned:
            return torch.zeros(shape, pin_memory=torch.cuda.is_available())
        return torch.zeros(shape, device=self.device)

    def get(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        table = self.tables[name]
        if table.is_pinned() and table.device != self.device:
            rows = torch.empty((len(ids), self.num_params), pin_memory=True)
            torch.index_select(table, 0, ids.to(table.device), out=rows)
            return rows.to(self.device, non_blocking=True)
        return super().get(name, ids)


class MmapStore(ClientStateStore):
    """Tables in files ``state_<name>.bin`` (sparse scratch files; durable ones allocated in full).

    ``directory=None``: scratch files in a temporary directory, deleted with the store. A directory
    (a run's ``state/``): durable files with an undo journal, which a checkpoint refers to instead of
    copying; ``reuse`` maps the files already there (rolled back to a checkpoint) instead of zeros.
    """

    placement = "mmap"

    def __init__(self, num_clients: int, num_params: int, device: torch.device, directory: Optional[Path] = None, reuse: bool = False):
        super().__init__(num_clients, num_params, device)
        self.durable = directory is not None
        self.reuse = reuse and self.durable
        self.paths: dict[str, Path] = {}
        self.maps: dict[str, mmap.mmap] = {}
        self.journal: Optional[journal.UndoJournal] = None
        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="fedrun-state-"))
            weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        else:
            self.directory = Path(directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.journal = journal.UndoJournal(self.directory / journal.JOURNAL_DIR, num_clients)
            if not self.reuse:
                journal.discard(self.journal.directory)  # an earlier run's entries mean nothing to new files

    def _allocate(self, name: str) -> torch.Tensor:
        shape = (self.num_clients, self.num_params)
        path = journal.table_path(self.directory, name)
        size = memory.BYTES * shape[0] * shape[1]
        with writing(path, size):  # a full or read-only disk: one sentence naming the file
            if not self.reuse:
                with open(path, "wb") as f:  # a sparse file of zeros: nothing is written until rows are set
                    f.truncate(size)
            if self.durable:  # every block now: a full disk is one sentence here, not a SIGBUS in a round
                journal.allocate(path, size)
            else:
                weakref.finalize(self, path.unlink, True)
            self.paths[name] = path
            table, self.maps[name] = journal.map_table(path, shape)
        return table

    def add(self, name: str, init: Optional[torch.Tensor] = None) -> None:
        """As :meth:`ClientStateStore.add`; with ``reuse`` the table is the file as it is (``init`` unused)."""
        super().add(name, None if self.reuse else init)
        if self.journal is not None and not self.reuse:  # reused files: the checkpoint's checksums (restore)
            self.journal.track(name, self.tables[name], zeros=init is None)

    def set(self, name: str, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Write rows (durable files: journal the old rows first)."""
        if self.journal is not None:
            self.journal.record(name, self.tables[name], ids)
        super().set(name, ids, rows)

    def flush(self) -> None:
        """Write the tables' changed pages to their files (msync) and fsync their directory."""
        for mapped in self.maps.values():
            mapped.flush()
        if self.maps:
            journal.fsync_dir(self.directory)

    def snapshot(self) -> dict[str, Any]:
        """Durable files: flushed, and named with the journal epoch the checkpoint starts."""
        if self.journal is None:
            return super().snapshot()
        self.flush()  # the files now hold the state after this round
        files = {"epoch": self.journal.epoch + 1, "shape": [self.num_clients, self.num_params], "tables": list(self.tables),
                 "sums": self.journal.sums_now(self.tables)}  # every row's CRC-32, verified on resume
        return {"placement": self.placement, "files": files}

    def committed(self, snapshot: dict[str, Any]) -> None:
        if self.journal is not None and "files" in snapshot:
            self.journal.begin_epoch(snapshot["files"]["epoch"])  # the old epoch's entries are no longer needed

    def restore(self, snapshot: dict[str, Any]) -> None:
        if "files" not in snapshot:
            return super().restore(snapshot)
        files = snapshot["files"]
        missing = set(files["tables"]) - set(self.tables)
        if not self.reuse or missing:
            raise ValueError(f"the store must reuse the checkpoint's files {files['tables']} (missing: {sorted(missing)})")
        self.journal.epoch = int(files["epoch"])  # rows written from now on lead back to this checkpoint
        for name, sums in files.get("sums", {}).items():  # the files were verified against them (checkpoint.roll_back_files)
            self.journal.sums[name] = sums.clone()


def store_for_run(
    requested: str,
    num_clients: int,
    participation: float,
    batch_size: int,
    num_tables: int,
    data: Any,
    model: Any,
    device: torch.device,
    directory: Optional[Path] = None,
    reuse: bool = False,
) -> ClientStateStore:
    """The run's store; ``requested`` ``auto`` places it by estimated size.

    The estimate counts ``num_tables`` tables against the free memory of the device, of the host and
    of the disk that would hold them, after a reserve for local training of the expected active
    clients (:mod:`fedrun.state.memory`). With ``reuse`` the disk the existing files take counts as free.
    ``directory``: where an mmap store keeps durable files (none: scratch files).
    """
    num_params = int(model.num_params)
    budget = memory.current_budget(device, directory or Path(tempfile.gettempdir()))
    if reuse and directory is not None:
        taken = sum(p.stat().st_blocks * 512 for p in Path(directory).glob("state_*.bin"))
        budget = dataclasses.replace(budget, disk=budget.disk + taken)
    act = memory.activation_bytes_per_sample(model.module, data.x_train[:1])
    per_client = memory.client_training_bytes(num_params, batch_size, act)
    active = max(1, math.ceil(participation * num_clients))
    training = min(active * per_client, max(per_client, budget.device // 4))
    state = memory.state_bytes(num_clients, num_params, num_tables)
    placement = memory.choose_placement(requested, state, training, budget, str(device))
    if placement != "device":
        log.info("client state (%s) placed: %s", memory.gib(state), placement)
    if placement == "mmap":
        return MmapStore(num_clients, num_params, device, directory, reuse)
    return TensorStore(num_clients, num_params, device, pinned=placement == "pinned")
