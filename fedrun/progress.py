"""Progress display: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Optional

from tqdm import tqdm

log = logging.getLogger("fedrun")


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: Optional[bool] = None):
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(total=total, initial=start, unit="round", dynamic_ncols=True) if self.tty else None

    def update(self, round_idx: int, total: int, acc: float, loss: float, s_per_round: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(acc=f"{100 * acc:.2f}%", loss=f"{loss:.4f}", s_round=f"{s_per_round:.3f}", refresh=False)
            self.bar.n = round_idx
            self.bar.refresh()
        else:
            log.info("round %d/%d  test_acc %.2f%%  test_loss %.4f  %.3f s/round", round_idx, total, 100 * acc, loss, s_per_round)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
