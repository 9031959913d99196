"""Checkpoints of a multi-process run (:mod:`fedrun.distributed`): one shard file per rank, one commit.

A checkpoint of round k is written in two phases, so that a kill at any moment leaves a consistent one:

1. every rank writes its client-state rows to ``<run dir>/shards/rank<r>-of-<N>.round<k>.pt``
   (temporary file, fsync, rename, fsync of the folder);
2. after a barrier (every shard of round k is durable), rank 0 writes ``checkpoint.pt`` as one
   process would (:func:`fedrun.checkpoint.save`: server model and state, RNG states, metrics rows,
   counters, config), with no tables and ``ranks: N`` among its counters; after a second barrier every
   rank deletes its shard files of older rounds.

``checkpoint.pt`` is the commit record: resuming reads it on every rank, then each rank loads its
shard of the round it names. A run dir checkpointed by N ranks resumes only with N ranks (the
sharding rule depends on N), and a single-process checkpoint only in a single process. Whether to
stop (SIGINT/SIGTERM on any rank) is agreed on by an all-reduce after every round, which is also the
round's liveness check: a dead rank makes it fail within seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

import torch

from fedrun import checkpoint, distributed
from fedrun.distributed import Ranks
from fedrun.errors import FedrunError
from fedrun.outputs import MetricsWriter
from fedrun.state import fsync_dir

SHARDS = "shards"


def shard_path(run_dir: Path, ranks: Ranks, round_idx: int) -> Path:
    return Path(run_dir) / SHARDS / f"rank{ranks.rank}-of-{ranks.size}.round{round_idx:08d}.pt"


def check_ranks(ckpt: Optional[dict[str, Any]], ranks: Optional[Ranks], run_dir: Path) -> None:
    """Refuse to resume a checkpoint written by a different number of ranks."""
    if ckpt is None:
        return
    wrote = int(ckpt.get("counters", {}).get("extra", {}).get("ranks", 1))
    now = 1 if ranks is None else ranks.size
    if wrote != now:
        how = "in a single process (without torchrun)" if wrote == 1 else f"with torchrun --nproc-per-node {wrote} (in all, {wrote} ranks)"
        raise FedrunError(
            f"{Path(run_dir) / checkpoint.CHECKPOINT} was written by {wrote} rank(s) and this run has {now}: "
            f"resume it {how}, or add resume=false to start over."
        )


def clear(run_dir: Path, ranks: Ranks) -> None:
    """A fresh start: rank 0 removes an earlier run's shard files."""
    if ranks.writer:
        shutil.rmtree(Path(run_dir) / SHARDS, ignore_errors=True)


def restore(ckpt: dict[str, Any], exp: Any, metrics_path: Path, run_dir: Path, ranks: Optional[Ranks]) -> checkpoint.Counters:
    """Every rank: the checkpoint's server model, state, RNG and counters, and this rank's shard.

    Rank 0 also cuts ``metrics.csv`` back to the checkpoint's rows (:func:`fedrun.checkpoint.restore`,
    which alone does it all in a single process).
    """
    if ranks is None:
        return checkpoint.restore(ckpt, exp, metrics_path)
    error: Optional[BaseException] = None
    counters = checkpoint.Counters()
    try:
        if ranks.writer:
            counters = checkpoint.restore(ckpt, exp, metrics_path, run_dir)
        else:  # no rows and a metrics file that does not exist: rank 0's metrics.csv is left alone
            absent = Path(run_dir) / SHARDS / f"rank{ranks.rank}-has-no-metrics.csv"
            counters = checkpoint.restore({**ckpt, "rows": []}, exp, absent, run_dir)
        path = shard_path(run_dir, ranks, int(ckpt["round"]))
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - missing or torn: one sentence
            raise FedrunError(
                f"{path} cannot be read ({type(err).__name__}) but {Path(run_dir) / checkpoint.CHECKPOINT} needs it: "
                "add resume=false to start this run dir over."
            ) from None
        exp.store.load_shard(shard["tables"])
    except Exception as err:  # noqa: BLE001 - agreed on below
        error = err
    distributed.agree(ranks, error)
    return counters


def _write_shard(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save(run_dir: Path, exp: Any, counters: checkpoint.Counters, rows: list[dict[str, Any]], ranks: Ranks) -> None:
    """Collective: the two-phase checkpoint of the round ``counters.round`` (module docstring)."""
    k = counters.round
    error: Optional[BaseException] = None
    try:
        payload = {"rank": ranks.rank, "size": ranks.size, "round": k, "tables": exp.store.shard()}
        _write_shard(shard_path(run_dir, ranks, k), payload)
    except Exception as err:  # noqa: BLE001 - agreed on below
        error = err
    distributed.agree(ranks, error)
    if ranks.writer:
        try:
            counters.extra["ranks"] = ranks.size
            checkpoint.save(run_dir, exp, counters, rows)
        except Exception as err:  # noqa: BLE001 - agreed on below
            error = err
    distributed.agree(ranks, error)
    keep = shard_path(run_dir, ranks, k).name
    for old in (Path(run_dir) / SHARDS).glob(f"rank{ranks.rank}-of-{ranks.size}.round*.pt*"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def after_round(
    cfg: Any, run_dir: Path, exp: Any, counters: checkpoint.Counters, rows: list[dict[str, Any]],
    signals: checkpoint.StopSignals, ranks: Optional[Ranks],
) -> None:
    """Collective, after every round: agree on a stop signal and write the checkpoint when it is due
    (:func:`fedrun.checkpoint.after_round` in a single process)."""
    if ranks is None:
        return checkpoint.after_round(cfg, run_dir, exp, counters, rows, signals)
    received = distributed.flag_max(ranks, signals.received or 0)
    every = int(cfg.get("checkpoint_every", 0) or 0)
    last = counters.round >= int(cfg.rounds)
    if last:
        return
    if received or (every and counters.round % every == 0):
        save(run_dir, exp, counters, rows, ranks)
    if received:
        name = signal.Signals(received).name
        raise checkpoint.Interrupted(
            f"stopped by {name} after round {counters.round} of {cfg.rounds} with a checkpoint in {run_dir}: "
            f"rerun the same torchrun command with hydra.run.dir={run_dir} (or resume=true) to continue.",
            received,
        )


def finish(run_dir: Path) -> None:
    """A finished run's shard files go (rank 0, after ``checkpoint.pt``, which refers to them)."""
    shutil.rmtree(Path(run_dir) / SHARDS, ignore_errors=True)


class RowsOnly(MetricsWriter):
    """The metrics writer of ranks > 0: keeps the rows (for the summary), writes no file."""

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def check_run_dir(cfg: Any, run_dir: Path, ranks: Optional[Ranks]) -> Optional[dict[str, Any]]:
    """The checkpoint to resume from (read by every rank), or None; refuses one of another number of ranks.

    Rank 0 decides what the run dir holds (:func:`fedrun.checkpoint.check_run_dir`, clearing an
    earlier run's outputs and shards on a fresh start); the others follow.
    """
    if ranks is None:
        ckpt = checkpoint.check_run_dir(cfg, run_dir)
        check_ranks(ckpt, None, run_dir)
        return ckpt
    answer: Any = None
    error: Optional[BaseException] = None
    if ranks.writer:
        try:
            ckpt = checkpoint.check_run_dir(cfg, run_dir)
            if ckpt is None:
                clear(run_dir, ranks)
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
