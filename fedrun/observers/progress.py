"""Progress display: a tqdm bar on a terminal, plain log lines otherwise, nothing when quiet; the
one-line summary at the end of every run; a sweep's per-job lines and its final table.

tqdm decides what a terminal is (``disable=None``: no bar when stderr is not a TTY); ``progress=true``
or ``false`` forces the bar on or off, and ``quiet=true`` also drops the per-round log lines (sweeps).
The summary line (:func:`summary_line`) is written whatever ``quiet`` says.

:class:`SweepProgress` is a Hydra callback, registered in ``conf/config.yaml`` (``hydra.callbacks``), so
every sweep gets it whatever its sweeper and launcher: after each job one line ``job 7/18 finished,
84.1%, ETA 3 min``, and when the sweep ends a table of its jobs. Jobs may end in other processes (the
joblib, ray or submitit launchers call ``on_job_end`` in the worker), so the sweep's record is a file,
``<sweep dir>/.fedrun_sweep.jsonl``: a start line written by ``on_multirun_start`` (time, number of
jobs when the overrides say it) and one line per finished job, appended under ``flock``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from tqdm import tqdm

from fedrun.observers.base import Observer

log = logging.getLogger("fedrun")

SWEEP_RECORD = ".fedrun_sweep.jsonl"


class Progress(Observer):
    """The progress display of a run of ``total`` rounds that starts after round ``start``."""

    def __init__(self, total: int, start: int = 0, enabled: Optional[bool] = None, quiet: bool = False,
                 device: Optional[str] = None):
        self.quiet, self.total, self.start = quiet, total, start
        disable = True if quiet else (None if enabled is None else not enabled)
        self.bar = tqdm(total=total, initial=start, unit="round", dynamic_ncols=True, disable=disable)
        self.device = device  # None: no slow-run warning (a rank that does not write the run dir)
        self.began = time.perf_counter()  # the first round of this process starts now (the loop follows)

    def round_done(self, round_idx: int) -> None:
        if round_idx == self.start + 1 and self.device is not None:  # a long first round on the CPU: said once
            slow = slow_run_warning(time.perf_counter() - self.began, self.total - round_idx, self.device)
            if slow:
                log.warning("%s", slow)

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


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * float(x):.2f}%"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``1 h 05 min``: a wall time as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def summary_line(summary: dict[str, Any], run_dir: Path, rounds: int) -> str:
    """The run's last line: status, final and best test accuracy (its round), rounds, wall time, run dir."""
    best = "" if summary.get("best_test_acc") is None else f" (best {_pct(summary['best_test_acc'])} at round {summary['best_round']})"
    return (f"fedrun: {summary.get('status')}: test_acc {_pct(summary.get('final_test_acc'))}{best}, "
            f"{summary.get('rounds_done', 0)}/{rounds} rounds, {duration(float(summary.get('seconds') or 0.0))} -> {run_dir}")


SLOW_ROUND_S = 5.0  # a first round this long on the CPU ...
SLOW_RUN_S = 600.0  # ... with this much estimated time left gets the warning


def slow_run_warning(first_round_s: float, rounds_left: int, device: str) -> Optional[str]:
    """The once-per-run warning after a long first round on the CPU (its time, evaluation included,
    times the rounds left), or None."""
    estimate = first_round_s * rounds_left
    if device != "cpu" or first_round_s < SLOW_ROUND_S or estimate < SLOW_RUN_S:
        return None
    return (f"fedrun: the first round took {duration(first_round_s)} on the CPU, so the {rounds_left} rounds left need about "
            f"{duration(estimate)}: a GPU (device=cuda) is much faster; for a first look use fewer rounds=, num_clients= "
            f"or local_epochs=.")


def count_jobs(overrides: list[str]) -> Optional[int]:
    """How many jobs the basic sweeper makes of these overrides (the product of each sweep's length);
    None when one cannot be listed (an interval, which only a search sweeper samples from)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    total = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            if override.is_interval_sweep():
                return None
            total *= len(list(override.sweep_iterator()))
    return total


def _append(path: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``record`` to the sweep's record under an exclusive lock; returns every record so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.write(json.dumps(record) + "\n")
            f.flush()
            f.seek(0)
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_record(sweep_dir: Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / SWEEP_RECORD
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_line(records: list[dict[str, Any]], now: float) -> str:
    """``job 7/18 finished, 84.10%, ETA 3 min`` for the last job of ``records``.

    The ETA is the mean wall time per finished job so far (since the sweep began: parallel launchers
    finish several per interval) times the jobs left; none when the number of jobs is unknown."""
    start = next((r for r in records if r.get("kind") == "start"), {})
    jobs = [r for r in records if r.get("kind") == "job"]
    done, last, total = len(jobs), jobs[-1], start.get("total")
    text = f"job {done}/{total if total else '?'} {last['status']}, {_pct(last.get('final_test_acc'))}"
    if total and "time" in start and done < total:
        text += f", ETA {duration((now - start['time']) / done * (total - done))}"
    return text


def sweep_table(records: list[dict[str, Any]]) -> str:
    """The sweep's jobs, one row each in job order: the overrides that vary, status, final and best
    accuracy, rounds and wall time."""
    import pandas as pd

    jobs = sorted((r for r in records if r.get("kind") == "job"), key=lambda r: r["num"])
    if not jobs:
        return "(no job finished)"
    settings = [dict(o.split("=", 1) for o in r["overrides"] if "=" in o) for r in jobs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1]  # what tells the jobs apart
    frame = pd.DataFrame({
        "job": [r["num"] for r in jobs],
        **{k: [s.get(k, "") for s in settings] for k in varying},
        "status": [r["status"] for r in jobs],
        "final": [_pct(r.get("final_test_acc")) for r in jobs],
        "best": [_pct(r.get("best_test_acc")) for r in jobs],
        "rounds": [r.get("rounds_done") for r in jobs],
        "time": [duration(float(r.get("seconds") or 0.0)) for r in jobs],
    })
    return frame.to_string(index=False)


class SweepProgress(Callback):
    """A line per finished job and a table at the end of a sweep (see the module docstring)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            total = count_jobs(list(config.hydra.overrides.task))
        except Exception:  # noqa: BLE001 - a sweeper's own syntax: the lines go without a total
            total = None
        if total is None:  # a search sweeper says how many trials it runs
            sweeper = config.hydra.get("sweeper") or {}
            total = sweeper.get("n_trials")
        path = sweep_dir / SWEEP_RECORD
        path.unlink(missing_ok=True)  # a sweep dir reused (skip_finished) starts a new record
        _append(path, {"kind": "start", "time": time.time(), "total": None if total is None else int(total)})

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(str(config.hydra.runtime.output_dir))
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {"status": "failed"}
        if summary.get("status") == "running":
            summary["status"] = "failed"
        record = {"kind": "job", "num": int(config.hydra.job.num), "overrides": [str(o) for o in config.hydra.overrides.task],
                  "run_dir": str(run_dir), "time": time.time(),
                  **{k: summary.get(k) for k in ("status", "final_test_acc", "best_test_acc", "rounds_done", "seconds")}}
        records = _append(Path(str(config.hydra.sweep.dir)) / SWEEP_RECORD, record)
        log.info("fedrun: %s", job_line(records, record["time"]))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        records = read_record(sweep_dir)
        jobs = [r for r in records if r.get("kind") == "job"]
        start = next((r for r in records if r.get("kind") == "start"), {})
        took = duration(time.time() - start["time"]) if "time" in start else "?"
        log.info("fedrun: sweep of %d jobs finished in %s -> %s (fedrun-report %s for the tables)\n%s",
                 len(jobs), took, sweep_dir, sweep_dir, sweep_table(records))
