"""Checkpoints of a multi-process run (:mod:`fedrun.distributed`): one shard file per rank, one commit.

Every function here takes ``ranks`` (None in a single process, where it is the plain
:mod:`fedrun.rundir.resume`/:mod:`fedrun.rundir.checkpoint` call). A checkpoint of round k is written in two
phases, so that a kill at any moment leaves a consistent one:

1. every rank writes its store's snapshot (its clients' rows) to
   ``<run dir>/shards/rank<r>-of-<N>.round<k>.pt`` (temporary file, fsync, rename, fsync of the folder);
2. after an all-reduce of the ranks' error flags (every shard of round k is durable), rank 0 writes
   ``checkpoint.pt`` as one process would (:func:`fedrun.rundir.checkpoint.save`: server model and state, RNG
   states, metrics rows, counters, config), whose store entry says ``ranks: N``; after a second
   all-reduce every rank deletes its shard files of older rounds.

``checkpoint.pt`` is the commit record: resuming reads it on every rank, then each rank loads its
shard of the round it names. A run dir checkpointed by N ranks resumes only with N ranks (the
sharding rule depends on N), and a single-process checkpoint only in a single process. Whether to
stop (SIGINT/SIGTERM on any rank) is agreed on by an all-reduce after every round, which is also the
round's liveness check: a dead rank makes it fail within seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from fedrun import distributed
from fedrun.rundir import checkpoint, resume
from fedrun.distributed import Ranks
from fedrun.errors import FedrunError, writing
from fedrun.state.journal import fsync_dir
from fedrun.rundir.files import MetricsWriter
from fedrun.rundir.signals import StopSignals

SHARDS = "shards"


def shard_path(run_dir: Path, ranks: Ranks, round_idx: int) -> Path:
    return Path(run_dir) / SHARDS / f"rank{ranks.rank}-of-{ranks.size}.round{round_idx:08d}.pt"


def check_ranks(ckpt: Optional[dict[str, Any]], ranks: Optional[Ranks], run_dir: Path) -> None:
    """Refuse to resume a checkpoint written by a different number of ranks."""
    if ckpt is None:
        return
    wrote = int(ckpt.get("store", {}).get("ranks", 1))
    now = 1 if ranks is None else ranks.size
    if wrote != now:
        how = "in a single process (without torchrun)" if wrote == 1 else f"with torchrun --nproc-per-node {wrote} (in all, {wrote} ranks)"
        raise FedrunError(
            f"{Path(run_dir) / checkpoint.CHECKPOINT} was written by {wrote} rank(s) and this run has {now}: "
            f"resume it {how}, or add resume=false to start over."
        )


def decide(spec: Any, run_dir: Path, ranks: Optional[Ranks]) -> Optional[dict[str, Any]]:
    """The checkpoint to resume from (read by every rank), or None (:func:`fedrun.rundir.resume.decide`);
    refuses one of another number of ranks. Rank 0 decides, clearing an earlier run's outputs and
    shards on a fresh start; the others follow."""
    if ranks is None:
        ckpt = resume.decide(spec, run_dir)
        check_ranks(ckpt, None, run_dir)
        return ckpt
    answer: Any = None
    error: Optional[BaseException] = None
    ckpt = None
    if ranks.writer:
        try:
            ckpt = resume.decide(spec, run_dir)
            if ckpt is None:
                shutil.rmtree(Path(run_dir) / SHARDS, ignore_errors=True)
            answer = "fresh" if ckpt is None else "resume"
        except Exception as err:  # noqa: BLE001 - rank 0 raises it, the others stop with a pointer to it
            error, answer = err, "error"
    answer = distributed.broadcast(ranks, answer)
    if error is not None:
        raise error
    if answer == "error":
        raise distributed.RankFailed(f"rank 0 of {ranks.size} stopped before the first round: its message is above.")
    if answer == "fresh":
        return None
    ckpt = ckpt if ranks.writer else checkpoint.load(Path(run_dir) / checkpoint.CHECKPOINT)
    check_ranks(ckpt, ranks, run_dir)
    return ckpt


def restore(ckpt: dict[str, Any], exp: Any, run_dir: Path, ranks: Optional[Ranks]) -> checkpoint.Counters:
    """The checkpoint's server model, state, RNG and counters on every rank (:func:`fedrun.rundir.checkpoint.restore`),
    and each rank's shard."""
    if ranks is None:
        return checkpoint.restore(ckpt, exp)
    error: Optional[BaseException] = None
    counters = checkpoint.Counters()
    try:
        counters = checkpoint.restore(ckpt, exp)
        path = shard_path(run_dir, ranks, int(ckpt["round"]))
        shard = read_shard(path, ranks, int(ckpt["round"]), run_dir)
        exp.store.load_shard(shard["snapshot"])
    except Exception as err:  # noqa: BLE001 - agreed on below
        error = err
    distributed.agree(ranks, error)
    return counters


def read_shard(path: Path, ranks: Ranks, round_idx: int, run_dir: Path) -> dict[str, Any]:
    """This rank's shard of round ``round_idx``, its checksum and its rank, size and round checked."""
    needs = f"{Path(run_dir) / checkpoint.CHECKPOINT} needs it"
    if not path.is_file():
        raise checkpoint.damaged(path, f"it is missing but {needs}")
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torn: one sentence
        raise checkpoint.damaged(path, f"it cannot be read ({type(err).__name__}), probably truncated, and {needs}") from None
    shard = checkpoint.check_digest(shard, path)
    if (shard.get("rank"), shard.get("size"), shard.get("round")) != (ranks.rank, ranks.size, round_idx):
        raise checkpoint.damaged(path, f"it is not rank {ranks.rank} of {ranks.size}'s shard of round {round_idx}")
    return shard


def stop_requested(signals: StopSignals, ranks: Optional[Ranks]) -> bool:
    """Whether SIGINT/SIGTERM came (to any rank: collective, every round)."""
    if ranks is None:
        return signals.received is not None
    received = distributed.flag_max(ranks, signals.received or 0)
    if received and signals.received is None:
        signals.received = received  # another rank's signal stops this one the same way
    return bool(received)


def _write_shard(path: Path, payload: dict[str, Any]) -> None:
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_file(path, lambda f: torch.save(payload, f), checkpoint.nbytes(payload))
    fsync_dir(path.parent)


def save(run_dir: Path, exp: Any, counters: checkpoint.Counters, rows: list[dict[str, Any]], ranks: Optional[Ranks]) -> None:
    """Write the checkpoint of round ``counters.round`` (collective: the two phases of the module docstring)."""
    if ranks is None:
        checkpoint.save(run_dir, exp, counters, rows)
        return
    k = counters.round
    error: Optional[BaseException] = None
    try:
        payload = checkpoint.with_digest({"rank": ranks.rank, "size": ranks.size, "round": k, "snapshot": exp.store.shard()})
        _write_shard(shard_path(run_dir, ranks, k), payload)
    except Exception as err:  # noqa: BLE001 - agreed on below
        error = err
    distributed.agree(ranks, error)
    if ranks.writer:
        try:
            checkpoint.save(run_dir, exp, counters, rows)
        except Exception as err:  # noqa: BLE001 - agreed on below
            error = err
    distributed.agree(ranks, error)
    keep = shard_path(run_dir, ranks, k).name
    for old in (Path(run_dir) / SHARDS).glob(f"rank{ranks.rank}-of-{ranks.size}.round*.pt*"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def finish(run_dir: Path, status: str) -> None:
    """After :func:`fedrun.rundir.resume.finish` (rank 0): a finished run's shard files go."""
    if status == "finished":
        shutil.rmtree(Path(run_dir) / SHARDS, ignore_errors=True)


class RowsOnly(MetricsWriter):
    """The metrics writer of ranks > 0: keeps the rows (for the summary), writes no file."""

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
