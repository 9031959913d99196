"""Progress display: a tqdm bar on a terminal, plain log lines otherwise, nothing when quiet.

tqdm decides what a terminal is (``disable=None``: no bar when stderr is not a TTY); ``progress=true``
or ``false`` forces the bar on or off, and ``quiet=true`` also drops the per-round log lines (sweeps).
"""

from __future__ import annotations

import logging
from typing import Optional

from tqdm import tqdm

from fedrun.observers.base import Observer

log = logging.getLogger("fedrun")


class Progress(Observer):
    """The progress display of a run of ``total`` rounds that starts after round ``start``."""

    def __init__(self, total: int, start: int = 0, enabled: Optional[bool] = None, quiet: bool = False):
        self.quiet, self.total = quiet, total
        disable = True if quiet else (None if enabled is None else not enabled)
        self.bar = tqdm(total=total, initial=start, unit="round", dynamic_ncols=True, disable=disable)

    def update(self, round_idx: int, total: int, acc: float, loss: float, s_per_round: float) -> None:
        if not self.bar.disable:
            self.bar.set_postfix(acc=f"{100 * acc:.2f}%", loss=f"{loss:.4f}", s_round=f"{s_per_round:.3f}", refresh=False)
            self.bar.n = round_idx
            self.bar.refresh()
        elif not self.quiet:
            log.info("round %d/%d  test_acc %.2f%%  test_loss %.4f  %.3f s/round", round_idx, total, 100 * acc, loss, s_per_round)

    def row(self, round_idx: int, row: dict) -> None:
        self.update(round_idx, self.total, row["test_acc"], row["test_loss"], row["wall_s"] / round_idx)

    def stop(self) -> None:
        self.bar.close()

    def close(self, summary: Optional[dict] = None) -> None:
        self.bar.close()
