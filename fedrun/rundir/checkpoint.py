"""Checkpoints: everything a run needs to continue exactly where it stopped, saved and restored.

``<run dir>/checkpoint.pt`` holds the server model, the algorithm's server state, the mean of all
models (:mod:`fedrun.simulation.all_models`), the client-state
store's snapshot (:meth:`fedrun.state.store.ClientStateStore.snapshot`: the tables of a tensor store; the
files of an mmap store by name and journal epoch, not their content), every RNG state (torch CPU and
CUDA, numpy, python), the metrics rows written so far, the round loop's :class:`Counters` and the
config, and a checksum of all of it (:func:`fedrun.rundir.integrity.digest`: SHA-256 over every tensor's bytes and every other
value's repr), verified on load, so a flipped byte, a truncation or a hand edit is refused in one
sentence instead of resumed from. It is written to a temporary file, fsynced and renamed over the old one (then the run dir is
fsynced), so a kill at any moment leaves either the old or the new checkpoint, never a torn one; an
mmap store starts its journal's next epoch only once the new checkpoint is durable (the order of
writes is in :mod:`fedrun.state.journal`). When and whether to resume is :mod:`fedrun.rundir.resume`'s decision.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from fedrun.errors import FedrunError, writing
from fedrun.rundir.integrity import check_content, check_digest, damaged, digest, with_digest  # noqa: F401  (also as checkpoint.*)

log = logging.getLogger("fedrun")

CHECKPOINT = "checkpoint.pt"
STATE_DIR = "state"  # a run's durable memory-mapped client-state files and their journal
FORMAT = 4  # 4: with a checksum of the content ("digest")
TENSOR_PLACEMENTS = ("device", "pinned")  # placements whose snapshot is the tables themselves


@dataclass(frozen=True)
class Pending:
    """What the rounds since the last metrics row add up to (written with the next row)."""

    train_losses: tuple[float, ...] = ()
    uplink_mb: float = 0.0
    downlink_mb: float = 0.0
    dropped_clients: int = 0

    def add(self, train_loss: float, uplink_mb: float, downlink_mb: float, dropped_clients: int) -> "Pending":
        """With one more round (a nan train loss, every client dropped, is left out of the mean)."""
        losses = self.train_losses + ((train_loss,) if math.isfinite(train_loss) else ())
        return Pending(losses, self.uplink_mb + uplink_mb, self.downlink_mb + downlink_mb, self.dropped_clients + dropped_clients)

    def mean_train_loss(self) -> float:
        return sum(self.train_losses) / len(self.train_losses) if self.train_losses else float("nan")


@dataclass(frozen=True)
class Counters:
    """Running totals of the round loop that a resumed run continues from."""

    round: int = 0
    comm: float = 0.0
    pending: Pending = field(default_factory=Pending)
    wall_s: float = 0.0
    guard_reference: Optional[float] = None  # the divergence guard's reference (fedrun.simulation.guard.reference_loss)
    dropped_streak: int = 0  # rounds in a row that dropped more than half of their clients
    threads: int = 0  # torch's intra-op thread count the rounds ran with (0: not recorded)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Counters":
        """Older checkpoints kept round 1's train loss as the guard's reference: it is recomputed."""
        pending = Pending(**{**d["pending"], "train_losses": tuple(d["pending"]["train_losses"])})
        return cls(d["round"], d["comm"], pending, d["wall_s"], d.get("guard_reference"), int(d.get("dropped_streak", 0)),
                   int(d.get("threads", 0)))


def check_threads(counters: Counters, now: int, device: Any, path: Path) -> None:
    """Refuse to resume CPU rounds with another torch thread count than the checkpoint's: the CPU
    kernels' reductions split by thread, so the numbers would differ from the uninterrupted run's."""
    if getattr(device, "type", "cpu") != "cpu" or not counters.threads or counters.threads == now:
        return
    raise FedrunError(
        f"{path} was written by rounds that ran with {counters.threads} torch thread(s) and this run would use {now}, "
        f"which changes the numbers: resume with threads={counters.threads}, or add resume=false to start over."
    )


def state_dir(run_dir: Path) -> Path:
    """Where a run keeps its durable memory-mapped client-state files and their undo journal."""
    return Path(run_dir) / STATE_DIR


def load(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint file (memory-mapped); a truncated, damaged or foreign file is one clear sentence.

    ``verify``: check the checksum and that the content is self-consistent (:func:`check_content`),
    which reads the whole file; without it (looking for a run's config), only the format is checked.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise damaged(path, f"it cannot be read ({type(err).__name__}), probably truncated") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, 3):
        raise FedrunError(f"{path} is not a fedrun checkpoint of this version: delete it, or add resume=false to start over.")
    if ckpt.get("format") == 3:
        raise FedrunError(f"{path} was written by an older fedrun (no checksum) and cannot be verified: "
                          "delete it to start over, or add resume=false.")
    if verify:
        ckpt = check_digest(ckpt, path)
        check_content(ckpt, path)
    return ckpt


def placement(ckpt: dict[str, Any], requested: str, path: Path) -> str:
    """The placement a resumed run uses: the checkpoint's (``auto``), or a requested one that holds
    its snapshot the same way (device and pinned tables); another is refused in one sentence."""
    saved = ckpt["store"]["placement"]
    if requested in ("auto", saved) or {requested, saved} <= set(TENSOR_PLACEMENTS):
        return saved if requested == "auto" else requested
    raise FedrunError(
        f"{path} keeps the client state with state_placement={saved}: resume with state_placement={saved} "
        "(or auto), or add resume=false to start over with another placement."
    )


def roll_back_files(run_dir: Path, ckpt: dict[str, Any]) -> bool:
    """Roll the run's memory-mapped state files back to ``ckpt`` when it refers to files.

    Returns whether it does (the run's store then maps the files as they are).
    """
    from fedrun.state import journal

    files = ckpt["store"].get("files")
    if not files:
        return False
    shape = tuple(files["shape"])
    maps = {name: _map_checked(run_dir, name, shape) for name in files["tables"]}
    entries = state_dir(run_dir) / journal.JOURNAL_DIR
    try:
        rows = journal.roll_back(entries, {name: table for name, (table, _) in maps.items()}, int(files["epoch"]))
    except Exception as err:  # noqa: BLE001 - a damaged entry (disk fault): the files cannot be trusted
        raise FedrunError(
            f"the client-state journal in {entries} cannot be applied ({type(err).__name__}): "
            "add resume=false to start this run dir over."
        ) from None
    for _, mapped in maps.values():
        mapped.flush()  # the roll-back is on disk before the entries that made it go
    for name, sums in files.get("sums", {}).items():  # the files as of the checkpoint, byte for byte
        wrong = (journal.row_sums(maps[name][0]) != sums).nonzero().flatten().tolist()
        if wrong:
            raise damaged(journal.table_path(state_dir(run_dir), name),
                          f"{len(wrong)} client row(s) (first: client {wrong[0]}) differ from what {CHECKPOINT} recorded")
    journal.discard(entries)
    if rows:
        log.info("fedrun: rolled %d client-state rows back to the checkpoint of round %d", rows, ckpt["round"])
    return True


def _map_checked(run_dir: Path, name: str, shape: tuple[int, ...]) -> Any:
    from fedrun.state import journal

    path = journal.table_path(state_dir(run_dir), name)
    size = path.stat().st_size if path.exists() else None
    expected = 4 * shape[0] * shape[1]  # float32
    if size != expected:
        problem = "is missing" if size is None else f"has {size} bytes instead of {expected}"
        raise FedrunError(f"{path} {problem} but {Path(run_dir) / CHECKPOINT} refers to it: add resume=false to start this run dir over.")
    return journal.map_table(path, shape)


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(run_dir: Path, exp: Any, counters: Counters, rows: list[dict[str, Any]]) -> Path:
    """Write ``checkpoint.pt`` atomically (temporary file, fsync, rename, fsync of the run dir)."""
    import torch

    from fedrun.state.journal import fsync_dir

    path = Path(run_dir) / CHECKPOINT
    store = exp.store
    if getattr(store, "durable", False) and Path(store.directory).resolve() != state_dir(run_dir).resolve():
        raise ValueError(f"durable client-state files must live in {state_dir(run_dir)}, not {store.directory}")
    snapshot = store.snapshot()
    payload = with_digest({
        "format": FORMAT,
        "round": counters.round,
        "theta": exp.theta,
        "server": dict(exp.server),
        "all_models": None if getattr(exp, "all_models", None) is None else exp.all_models.state_dict(),
        "store": snapshot,
        "rng": rng_states(),
        "rows": list(rows),
        "counters": asdict(counters),
        "config": exp.spec.config,
    })
    write_file(path, lambda f: torch.save(payload, f), nbytes(payload))
    fsync_dir(Path(run_dir))
    store.committed(snapshot)
    log.debug("fedrun: checkpoint of round %d written to %s", counters.round, path)
    return path


def nbytes(value: Any) -> int:
    """About how many bytes ``torch.save(value)`` writes: its tensors' bytes, 512 bytes a metrics row
    and 16 KB for the rest (RNG states, config, the zip's own records)."""
    import torch

    def tensors(v: Any) -> int:
        if isinstance(v, torch.Tensor):
            return v.nelement() * v.element_size()
        if isinstance(v, dict):
            return sum(tensors(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(tensors(x) for x in v)
        return 0

    rows = value.get("rows") if isinstance(value, dict) else None
    return tensors(value) + 512 * len(rows or ()) + 16_384


def write_file(path: Path, write: Any, needed: Optional[int] = None) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` into ``<path>.tmp``, fsync, rename over ``path``.

    A full disk or an unwritable folder is :class:`~fedrun.errors.DiskFull` naming ``path`` and the
    ``needed`` bytes; the ``.tmp`` is removed on any failure and ``path`` (the previous checkpoint)
    stays as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path, needed):
            with tmp.open("wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def restore(ckpt: dict[str, Any], exp: Any) -> Counters:
    """Put the checkpoint's state into ``exp``; returns its counters. (``metrics.csv`` is rewritten
    from the checkpoint's rows by the caller: :meth:`fedrun.rundir.files.MetricsWriter.rewrite`.)

    A store of the checkpoint's files must map them, rolled back (:func:`roll_back_files`), already.
    """
    import torch

    # clone: the checkpoint is memory-mapped (read lazily); the run's own tensors must not alias it
    exp.theta = ckpt["theta"].to(exp.device).clone()
    exp.server = {k: v.to(exp.device).clone() if isinstance(v, torch.Tensor) else v for k, v in ckpt["server"].items()}
    if getattr(exp, "all_models", None) is not None:
        exp.all_models.load_state_dict(ckpt["all_models"])
    exp.store.restore(ckpt["store"])
    set_rng_states(ckpt["rng"])
    return Counters.from_dict(ckpt["counters"])
