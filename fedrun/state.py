"""The per-client state store: one ``[num_clients, num_params]`` tensor per kind of state.

Algorithms declare the kinds they need (FedDyn's gradient state, SCAFFOLD's control variates) and
read or write rows by client id, never by position in the active list. The store is the only place
per-client state lives, so checkpoints, memory estimates and placement (device, pinned host memory,
memory-mapped file) are handled here once for every algorithm.

Memory-mapped tables come in two kinds (``files``). ``scratch`` files live in a temporary
directory and are deleted with the store. ``new``/``reuse`` files are *durable*: they live in a
run's state directory (``<run dir>/state/state_<name>.bin``), survive the process, and a checkpoint
refers to them instead of copying them (:mod:`fedrun.checkpoint`); ``reuse`` maps the files a
checkpoint left as they are instead of creating zeros.

A durable store keeps an **undo journal** (:class:`UndoJournal`, ``<state dir>/journal/``) so that
its files can be rolled back to the last checkpoint after a crash at any moment:

1. ``set`` of rows not yet written since the last checkpoint (the journal's *epoch*) first reads
   their old values and writes them (ids, a zero-row mask, the non-zero rows) to
   ``journal/<epoch>-<seq>.undo.tmp``, fsyncs it, renames it to ``<epoch>-<seq>.undo`` and fsyncs the
   journal directory; only then are the new rows written into the mapped table. A row is journaled
   once per epoch: its journaled value is its value at the checkpoint. An entry that did not reach
   its rename is a ``.tmp`` file, and the table was not touched after it.
2. A checkpoint (:func:`fedrun.checkpoint.save`) msyncs every table (the files now hold the state
   after the round), then atomically writes ``checkpoint.pt`` naming epoch ``e + 1`` (fsync, rename,
   fsync of the run dir), and only then starts epoch ``e + 1`` here, deleting the entries of older
   epochs. A crash before the rename leaves the old checkpoint (epoch ``e``) and every entry of epoch
   ``e``; one after it leaves the new checkpoint, whose epoch has no entries yet (leftovers of older
   epochs are ignored).
3. Resuming (:func:`roll_back`, before the store is built) applies the entries of the checkpoint's
   epoch newest first, msyncs the files, then deletes every entry. A crash during roll-back leaves
   the entries, and applying them again gives the same files (they hold absolute old values).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import mmap
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from fedrun import memory
from fedrun.config import choice

log = logging.getLogger("fedrun")

FILE_KINDS = ("scratch", "new", "reuse")
JOURNAL_DIR = "journal"
ENTRY_SUFFIX = ".undo"


def table_path(directory: Path, name: str) -> Path:
    """The file of table ``name`` of a memory-mapped store in ``directory``."""
    return Path(directory) / f"state_{name}.bin"


def map_table(path: Path, shape: tuple[int, int], writable: bool = True) -> tuple[torch.Tensor, mmap.mmap]:
    """Map the float32 file ``path`` as a ``shape`` tensor, shared (read-only unless ``writable``).

    Shared maps are not charged against the kernel's overcommit limit, so tables larger than RAM
    map fine (a private copy-on-write map of them is refused). Raises ``ValueError`` when the
    file's size does not match ``shape``.
    """
    size = memory.BYTES * shape[0] * shape[1]
    with open(path, "r+b" if writable else "rb") as f:
        actual = os.fstat(f.fileno()).st_size
        if actual != size:
            raise ValueError(f"{path} has {actual} bytes, not the {size} of a {shape[0]}x{shape[1]} float32 table")
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    with warnings.catch_warnings():  # read-only: the caller only reads it (torch warns about writes)
        warnings.filterwarnings("ignore", message=".*not writable.*")
        table = torch.frombuffer(mapped, dtype=torch.float32).view(shape)
    return table, mapped  # the tensor keeps the map alive


def fsync_dir(directory: Path) -> None:
    """Make renames and new files in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class UndoJournal:
    """Old values of durable table rows, written before the rows are overwritten (module docstring).

    ``epoch`` names the checkpoint the entries lead back to; ``saved`` marks, per table, the rows
    already journaled in this epoch (a row's first overwrite since the checkpoint is the only one
    whose old value matters).
    """

    def __init__(self, directory: Path, num_clients: int, epoch: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.num_clients = num_clients
        self.epoch = epoch
        self.seq = 0
        self.saved: dict[str, torch.Tensor] = {}

    def record(self, name: str, table: torch.Tensor, ids: torch.Tensor) -> None:
        """Journal the current rows ``ids`` of ``table`` that this epoch has not journaled yet."""
        ids = ids.to("cpu", torch.long)
        saved = self.saved.setdefault(name, torch.zeros(self.num_clients, dtype=torch.bool))
        new = torch.unique(ids[~saved[ids]])
        if len(new) == 0:
            return
        bits = table.view(torch.int32)
        zero = torch.tensor([not bool(bits[i].any()) for i in new.tolist()], dtype=torch.bool)  # bitwise +0.0 rows
        header = {"table": name, "epoch": self.epoch, "ids": new, "zero": zero, "num_params": table.shape[1]}
        self.write(header, [table[i] for i in new[~zero].tolist()])
        saved[new] = True

    def write(self, header: dict[str, Any], rows: list[torch.Tensor]) -> Path:
        """Write an entry durably as the next one of this epoch (temporary file, fsync, rename, fsync).

        Layout: the length of the header (8 bytes, little-endian), the header (``torch.save``: table
        name, epoch, ids, zero-row mask, num_params), then the raw float32 ``rows`` (CPU row views,
        written straight from the table's memory, no copy), one per non-zero id in id order.
        """
        path = self.directory / f"{self.epoch:08d}-{self.seq:08d}{ENTRY_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        buffer = io.BytesIO()
        torch.save(header, buffer)
        with tmp.open("wb") as f:
            f.write(len(buffer.getbuffer()).to_bytes(8, "little"))
            f.write(buffer.getbuffer())
            for row in rows:
                f.write(row.numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)
        self.seq += 1
        return path

    def begin_epoch(self, epoch: int) -> None:
        """Start journaling against checkpoint ``epoch`` (already durable); drop older entries."""
        self.epoch, self.seq = epoch, 0
        self.saved.clear()
        discard(self.directory, keep_epoch=epoch)


def entries(directory: Path, epoch: Optional[int] = None) -> list[Path]:
    """Complete journal entries in ``directory`` (of ``epoch`` when given), oldest first."""
    if not Path(directory).is_dir():
        return []
    found = []
    for path in Path(directory).glob(f"*{ENTRY_SUFFIX}"):
        head, _, seq = path.stem.partition("-")
        if head.isdigit() and seq.isdigit() and (epoch is None or int(head) == epoch):
            found.append((int(head), int(seq), path))
    return [p for *_, p in sorted(found)]


def discard(directory: Path, keep_epoch: Optional[int] = None) -> None:
    """Delete the journal entries (and torn ``.tmp`` ones) of every epoch but ``keep_epoch``."""
    if not Path(directory).is_dir():
        return
    keep = set(entries(directory, keep_epoch)) if keep_epoch is not None else set()
    for path in Path(directory).iterdir():
        if path not in keep and path.is_file():
            path.unlink(missing_ok=True)


def roll_back(directory: Path, tables: dict[str, torch.Tensor], epoch: int) -> int:
    """Write back the journaled old rows of ``epoch`` into ``tables``, newest entry first.

    Returns how many rows were restored. The caller then flushes the tables and calls :func:`discard`.
    """
    restored = 0
    for path in reversed(entries(directory, epoch)):
        restored += apply_entry(path, tables)
    return restored


def apply_entry(path: Path, tables: dict[str, torch.Tensor]) -> int:
    """Write one journal entry's old rows back into its table (in place, straight from the file)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = torch.load(io.BytesIO(f.read(size)), map_location="cpu", weights_only=True)
        table = tables[header["table"]]
        ids, zero = header["ids"], header["zero"]
        if header["num_params"] != table.shape[1]:
            raise ValueError(f"{path} holds rows of {header['num_params']} params, the table has {table.shape[1]}")
        table[ids[zero]] = 0.0
        for i in ids[~zero].tolist():
            if f.readinto(table[i].numpy().data.cast("B")) != 4 * table.shape[1]:
                raise ValueError(f"{path} is truncated")
    return len(ids)


class ClientStateStore:
    """Named ``[m, P]`` float32 tables with row access by client id.

    ``placement``: ``device`` keeps tables on the compute device; ``pinned`` in page-locked host
    memory (rows are copied to the device per round; plain host memory when there is no CUDA);
    ``mmap`` in sparse files ``state_<name>.bin`` under ``directory`` (a temporary directory when
    none is given), read and written a round's rows at a time, so the tables may exceed RAM.
    ``files`` (mmap only): ``scratch`` files are deleted with the store (checkpoints copy the
    tables); ``new`` (zeros) and ``reuse`` (the files already in ``directory``, as they are) are
    durable, journaled files that checkpoints refer to instead of copying (module docstring).
    """

    def __init__(
        self,
        num_clients: int,
        num_params: int,
        device: torch.device,
        placement: str = "device",
        directory: Optional[Path] = None,
        files: str = "scratch",
    ):
        if placement not in ("device", "pinned", "mmap"):
            raise ValueError(f"unknown state placement {placement!r}")
        if files not in FILE_KINDS:
            raise ValueError(f"unknown state files kind {files!r}")
        self.num_clients = num_clients
        self.num_params = num_params
        self.device = torch.device(device)
        self.placement = placement
        self.directory = Path(directory) if directory is not None else None
        self.files = files if placement == "mmap" and directory is not None else "scratch"
        self.tables: dict[str, torch.Tensor] = {}
        self.paths: dict[str, Path] = {}
        self.maps: dict[str, mmap.mmap] = {}
        self.journal: Optional[UndoJournal] = None
        if placement == "mmap":
            if self.directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix="fedrun-state-"))
                weakref.finalize(self, shutil.rmtree, str(self.directory), True)
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
            if self.durable:
                self.journal = UndoJournal(self.directory / JOURNAL_DIR, num_clients)
                if self.files == "new":
                    discard(self.journal.directory)  # an earlier run's entries mean nothing to new files

    @property
    def durable(self) -> bool:
        """Whether the tables are journaled files that outlive the store (and checkpoints refer to)."""
        return self.files != "scratch"

    def _allocate(self, name: str) -> torch.Tensor:
        shape = (self.num_clients, self.num_params)
        if self.placement == "device":
            return torch.zeros(shape, device=self.device)
        if self.placement == "pinned":
            return torch.zeros(shape, pin_memory=torch.cuda.is_available())
        assert self.directory is not None
        path = table_path(self.directory, name)
        if self.files != "reuse":
            with open(path, "wb") as f:  # a sparse file of zeros: nothing is written until rows are set
                f.truncate(memory.BYTES * shape[0] * shape[1])
        if self.files == "scratch":
            weakref.finalize(self, _unlink, path)
        self.paths[name] = path
        table, self.maps[name] = map_table(path, shape)
        return table

    def add(self, name: str, init: Optional[torch.Tensor] = None) -> None:
        """Create table ``name``: zeros, or every row equal to the vector ``init``.

        With ``files="reuse"`` the table is the existing file as it is (``init`` is not applied: the
        file holds what a checkpoint saved).
        """
        table = self._allocate(name)
        if init is not None and self.files != "reuse":
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
        """Write ``rows`` (``[len(ids), P]``) at client ``ids`` (durable files: journal the old rows first)."""
        table = self.tables[name]
        if self.journal is not None:
            self.journal.record(name, table, ids)
        table[ids.to(table.device)] = rows.to(table.device)

    def flush(self) -> None:
        """Write the memory-mapped tables' changed pages to their files (msync) and fsync their directory."""
        for mapped in self.maps.values():
            mapped.flush()
        if self.maps and self.directory is not None:
            fsync_dir(self.directory)

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
    cfg: Any,
    data: Any,
    model: Any,
    algorithm: Any,
    device: torch.device,
    directory: Optional[Path] = None,
    files: str = "scratch",
) -> ClientStateStore:
    """The run's store, its placement from ``cfg.state_placement`` (``auto``: by estimated size).

    The estimate counts the algorithm's tables (plus ``_latest_delta`` when ``eval_all``) against
    the free memory of the device, of the host and of the disk that would hold them, after a
    reserve for local training of the expected active clients (:mod:`fedrun.memory`). ``files``:
    see :class:`ClientStateStore` (with ``reuse``, the disk the existing files take counts as free).
    """
    m, num_params = int(cfg.num_clients), int(model.num_params)
    tables = len(getattr(algorithm, "client_states", ())) + (1 if cfg.get("eval_all", False) else 0)
    requested = cfg.get("state_placement", "auto")
    requested = choice(requested)
    budget = memory.current_budget(device, directory or Path(tempfile.gettempdir()))
    if files == "reuse" and directory is not None:  # the checkpoint's files are reused, not added
        taken = sum(p.stat().st_blocks * 512 for p in Path(directory).glob("state_*.bin"))
        budget = dataclasses.replace(budget, disk=budget.disk + taken)
    act = memory.activation_bytes_per_sample(model.module, data.x_train[:1])
    per_client = memory.client_training_bytes(num_params, int(cfg.batch_size), act)
    active = max(1, math.ceil(float(cfg.participation) * m))
    training = min(active * per_client, max(per_client, budget.device // 4))
    state = memory.state_bytes(m, num_params, tables)
    placement = memory.choose_placement(requested, state, training, budget, str(device))
    if placement != "device":
        log.info("client state (%s) placed: %s", memory.gib(state), placement)
    return ClientStateStore(m, num_params, device, placement, directory, files)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
