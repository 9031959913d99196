"""SIGINT/SIGTERM: the first one stops the run after the round in progress, with a checkpoint; a
second one stops it at once (from the last periodic checkpoint). Once the rounds are done and the
last outputs are being written (:meth:`StopSignals.writing_outputs`), a first one waits for them and
a second one stops the writing, with a sentence saying what the run dir then holds."""

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
        self.saved_round: Optional[int] = None  # the round of the last checkpoint this run wrote
        self._outputs: Optional[str] = None  # what a second signal says while the last outputs are written
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            name = signal.Signals(signum).name
            if self._outputs is not None:
                raise Interrupted(f"stopped by a second {name} while writing the run's last outputs{self._outputs}", signum)
            raise Interrupted(
                f"stopped by a second {name} before the round finished; "
                "rerun the same command to resume from the last periodic checkpoint.",
                signum,
            )
        self.received = signum

    def writing_outputs(self, run_dir: Path, rounds: int, checkpoint_round: Optional[int]) -> None:
        """From now on the rounds are done (``rounds`` of them, every row in metrics.csv) and the
        convergence plot and summary.json are being written; ``checkpoint_round``: the round of the
        checkpoint.pt in ``run_dir`` (None: there is none)."""
        if checkpoint_round is None:
            held = (f"{run_dir} holds metrics.csv with all {rounds} rounds but no checkpoint (none was due before the last "
                    "round): rerun the same command to run it again from the start (or keep metrics.csv as it is).")
        elif checkpoint_round >= rounds:
            held = (f"{run_dir} holds metrics.csv with all {rounds} rounds and checkpoint.pt of round {checkpoint_round}: "
                    "rerun the same command to write them (no round runs again).")
        else:
            held = (f"{run_dir} holds metrics.csv with all {rounds} rounds and checkpoint.pt of round {checkpoint_round}: "
                    f"rerun the same command to finish (it reruns rounds {checkpoint_round + 1} to {rounds} from that checkpoint).")
        self._outputs = f" (convergence plot, summary.json) after all {rounds} rounds; {held}"

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
