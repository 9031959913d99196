"""The run's outputs that follow the rounds: ``metrics.csv`` rows and checkpoints.

:class:`MetricsRows` writes each evaluated round's row (flushed at once); :class:`Checkpoints` saves
the checkpoint every ``checkpoint_every`` rounds, after the last round when ``keep_checkpoint``, and
on SIGINT/SIGTERM, after which it stops the run (a signal during the last round just lets it finish).
Under torchrun every rank saves its shard (:mod:`fedrun.rundir.ranked`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from fedrun.distributed import Ranks
from fedrun.observers.base import Observer
from fedrun.rundir import ranked
from fedrun.rundir.checkpoint import Counters
from fedrun.rundir.files import MetricsWriter
from fedrun.rundir.signals import StopSignals


class MetricsRows(Observer):
    def __init__(self, writer: MetricsWriter):
        self.writer = writer

    def row(self, round_idx: int, row: dict[str, Any]) -> None:
        self.writer.write(row)


class Checkpoints(Observer):
    def __init__(self, exp: Any, run_dir: Path, writer: MetricsWriter, counters: Callable[[int], Counters],
                 signals: StopSignals, ranks: Optional[Ranks]):
        self.exp, self.run_dir, self.writer, self.counters = exp, Path(run_dir), writer, counters
        self.signals, self.ranks = signals, ranks

    def round_done(self, round_idx: int) -> None:
        spec, rounds = self.exp.spec, self.exp.spec.rounds
        stop = ranked.stop_requested(self.signals, self.ranks) and round_idx < rounds  # in the last round: just finish
        if stop or spec.checkpoint.due(round_idx, rounds) or (spec.keep_checkpoint and round_idx == rounds):  # keep: to continue later
            ranked.save(self.run_dir, self.exp, self.counters(round_idx), self.writer.rows, self.ranks)
            self.signals.saved_round = round_idx  # what a stop while the last outputs are written leaves
        if stop:
            raise self.signals.stop(round_idx, rounds, self.run_dir)
