"""Durable memory-mapped client-state files and their undo journal.

A run's memory-mapped tables are files ``<run dir>/state/state_<name>.bin``; a checkpoint refers to
them instead of copying them. The **undo journal** (``<state dir>/journal/``) lets them be rolled
back to the last checkpoint after a crash at any moment:

1. ``set`` of rows not yet written since the last checkpoint (the journal's *epoch*) first reads
   their old values and writes them (ids, a zero-row mask, the non-zero rows) to
   ``journal/<epoch>-<seq>.undo.tmp``, fsyncs it, renames it to ``<epoch>-<seq>.undo`` and fsyncs the
   journal directory; only then are the new rows written into the mapped table. A row is journaled
   once per epoch: its journaled value is its value at the checkpoint. An entry that did not reach
   its rename is a ``.tmp`` file, and the table was not touched after it.
2. A checkpoint (:func:`fedrun.rundir.checkpoint.save`) msyncs every table (the files now hold the state
   after the round), then atomically writes ``checkpoint.pt`` naming epoch ``e + 1`` (fsync, rename,
   fsync of the run dir), and only then starts epoch ``e + 1`` here, deleting the entries of older
   epochs. A crash before the rename leaves the old checkpoint (epoch ``e``) and every entry of epoch
   ``e``; one after it leaves the new checkpoint, whose epoch has no entries yet (leftovers of older
   epochs are ignored).
3. Resuming (:func:`roll_back`, before the store maps the files) applies the entries of the
   checkpoint's epoch newest first, msyncs the files, then deletes every entry. A crash during
   roll-back leaves the entries, and applying them again gives the same files (they hold absolute
   old values).

**Checksums**: a checkpoint also holds a CRC-32 of every row of every table as of the checkpoint
(:meth:`UndoJournal.sums_now`), kept up to date incrementally: only the rows written since the last
checkpoint (those the journal saw) are summed again, so a checkpoint reads no more than the round
wrote. Resuming compares every row with them after the roll-back (:func:`row_sums`, one read of the
files), so a damaged file is refused instead of resumed from.
"""

from __future__ import annotations

import io
import mmap
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional

import torch

from fedrun.errors import writing
from fedrun.state import memory

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


def row_sums(table: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CRC-32 of the bytes of rows ``ids`` (all rows when None) of a CPU float32 table, as int64."""
    rows = range(table.shape[0]) if ids is None else ids.tolist()
    return torch.tensor([zlib.crc32(table[i].numpy().data) for i in rows], dtype=torch.int64)


def allocate(path: Path, nbytes: int) -> None:
    """Allocate every disk block of the table file ``path`` (``posix_fallocate``; it reads as zeros,
    and blocks already there cost nothing), so that no access through the map can meet a full disk:
    that would be a SIGBUS in the middle of a round (on tmpfs even a read allocates), and is
    :class:`~fedrun.errors.DiskFull` here, before the first round. The placement rule
    (:func:`fedrun.state.memory.choose_placement`) asks for that much free disk anyway."""
    with writing(path, nbytes):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as err:
            if err.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: a filesystem without fallocate stays sparse
                raise OSError(err.errno, err.strerror, str(path)) from None
        finally:
            os.close(fd)


def zero_row_sum(num_params: int) -> int:
    return zlib.crc32(bytes(memory.BYTES * num_params))


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
        self.sums: dict[str, torch.Tensor] = {}  # per table, every row's CRC-32 as of the last sums_now

    def track(self, name: str, table: torch.Tensor, zeros: bool) -> None:
        """Start keeping the row checksums of a new table (``zeros``: every row is still +0.0)."""
        if zeros:
            self.sums[name] = torch.full((table.shape[0],), zero_row_sum(table.shape[1]), dtype=torch.int64)
        else:
            self.sums[name] = row_sums(table)

    def sums_now(self, tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every row's checksum now: those of the rows written since the last checkpoint recomputed."""
        out = {}
        for name, table in tables.items():
            sums = self.sums.get(name)
            if sums is None:
                self.track(name, table, zeros=False)
            elif name in self.saved:
                ids = self.saved[name].nonzero().flatten()
                sums[ids] = row_sums(table, ids)
            out[name] = self.sums[name].clone()
        return out

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
        needed = 8 + len(buffer.getbuffer()) + sum(memory.BYTES * len(row) for row in rows)
        try:  # a full disk: no entry, and the table is not touched
            with writing(path, needed), tmp.open("wb") as f:
                f.write(len(buffer.getbuffer()).to_bytes(8, "little"))
                f.write(buffer.getbuffer())
                for row in rows:
                    f.write(row.numpy().data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception:  # a full disk (a crash leaves the torn .tmp, which roll-back ignores)
            tmp.unlink(missing_ok=True)
            raise
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
