"""SIGINT/SIGTERM: the first one stops the run after the round in progress, with a checkpoint; a
second one stops it at once (from the last periodic checkpoint)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

from fedrun.errors import FedrunError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(FedrunError):
    """A signal stopped the run; the exit code is ``128 + signal``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag checked between rounds (a context manager that
    installs the handlers and puts the old ones back; in a thread other than the main one, none)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise Interrupted(
                f"stopped by a second {signal.Signals(signum).name} before the round finished; "
                "rerun the same command to resume from the last periodic checkpoint.",
                signum,
            )
        self.received = signum

    def __enter__(self) -> "StopSignals":
        try:
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def stop(self, round_idx: int, rounds: int, run_dir: Path) -> Interrupted:
        """The error that ends the run after ``round_idx``'s checkpoint."""
        assert self.received is not None
        return Interrupted(
            f"stopped by {signal.Signals(self.received).name} after round {round_idx} of {rounds} with a checkpoint in "
            f"{run_dir}: rerun the same command with hydra.run.dir={run_dir} (or resume=true) to continue.",
            self.received,
        )
