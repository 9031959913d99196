"""Helpers for running many fedrun runs at once: GPU slots for parallel launchers.

:class:`GpuSlots` is a Hydra callback (``hydra/callbacks=gpu_slots``). Before a run starts it takes
one of ``runs_per_gpu`` x (visible GPUs) slots, an exclusive ``flock`` on a small file in
``lock_dir``, waits while all are taken, and makes that slot's GPU the current CUDA device (the one
``device=auto`` and ``device=cuda`` use); the slot is given back when the run ends (or its process
dies). So with the joblib launcher and ``n_jobs`` > GPUs, no GPU ever has more than ``runs_per_gpu``
runs, whichever worker process picks up which run. Without CUDA it does nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from hydra.experimental.callback import Callback

from fedrun.errors import FedrunError

log = logging.getLogger("fedrun")


def acquire_slot(lock_dir: Path, num_slots: int, poll_s: float = 0.5, timeout_s: Optional[float] = None) -> tuple[int, TextIO]:
    """Lock the first free slot file ``slot-<i>.lock`` (i < num_slots); returns (i, open file holding the lock)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for i in range(num_slots):
            handle = open(lock_dir / f"slot-{i}.lock", "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return i, handle
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free slot among {num_slots} in {lock_dir}")
        time.sleep(poll_s)


class GpuSlots(Callback):
    """At most ``runs_per_gpu`` concurrent runs per visible GPU (see the module docstring)."""

    def __init__(self, runs_per_gpu: int = 1, lock_dir: str = "/tmp/fedrun-gpu-slots") -> None:
        if int(runs_per_gpu) < 1:
            raise FedrunError(f"runs_per_gpu={runs_per_gpu} is impossible: use at least 1 run per GPU.")
        self.runs_per_gpu = int(runs_per_gpu)
        self.lock_dir = Path(lock_dir)
        self._handle: Optional[TextIO] = None

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        gpus = torch.cuda.device_count()
        slot, self._handle = acquire_slot(self.lock_dir, gpus * self.runs_per_gpu)
        torch.cuda.set_device(slot % gpus)
        log.info("fedrun: GPU slot %d -> cuda:%d (at most %d runs per GPU)", slot, slot % gpus, self.runs_per_gpu)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
