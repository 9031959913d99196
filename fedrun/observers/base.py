"""The observer interface: what watches the rounds, called by the round loop at fixed points.

As pfl-research's callbacks: progress, trackers, per-client evaluation, ``metrics.csv`` and
checkpoints are observers, so the loop (:func:`fedrun.runner.run`) stays a dozen lines. Each hook is
optional; :class:`Observers` calls them in list order, which is the order the outputs are written:
the extra metrics of a row first, then the row to ``metrics.csv``, the trackers, the progress display,
and after every round (evaluated or not) the checkpoints.
"""

from __future__ import annotations

from typing import Any, Iterable


class Observer:
    """One watcher of the rounds; every hook does nothing unless overridden."""

    def metrics(self, round_idx: int, exp: Any) -> dict[str, float]:
        """Extra columns of an evaluated round's metrics row (per-client evaluation)."""
        return {}

    def row(self, round_idx: int, row: dict[str, Any]) -> None:
        """An evaluated round's metrics row, complete."""

    def round_done(self, round_idx: int) -> None:
        """After every round, evaluated or not (checkpoints; a stop signal ends the run here)."""

    def stop(self) -> None:
        """The rounds are over (finished or not), before the last outputs are written."""

    def close(self, summary: dict[str, Any]) -> None:
        """After the last outputs, with the run's summary."""


class Observers(Observer):
    """Observers called in order; ``metrics`` merges what each returns."""

    def __init__(self, observers: Iterable[Observer]):
        self.observers = [o for o in observers if o is not None]

    def __add__(self, more: Iterable[Observer]) -> "Observers":
        return Observers([*self.observers, *more])

    def metrics(self, round_idx: int, exp: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.observers:
            out.update(o.metrics(round_idx, exp))
        return out

    def row(self, round_idx: int, row: dict[str, Any]) -> None:
        for o in self.observers:
            o.row(round_idx, row)

    def round_done(self, round_idx: int) -> None:
        for o in self.observers:
            o.round_done(round_idx)

    def stop(self) -> None:
        for o in self.observers:
            o.stop()

    def close(self, summary: dict[str, Any]) -> None:
        for o in self.observers:
            o.close(summary)
