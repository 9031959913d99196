"""The first and last moments of a run, in an order that a kill at any instant cannot spoil.

At the start a fresh run writes ``summary.json`` with ``status: running`` and its config, so that a
run dir whose run is killed before its first checkpoint still says which config wrote its
``metrics.csv`` (:func:`fedrun.rundir.resume.decide` refuses another config there).

At the end (:func:`finish_run`):

1. ``convergence.png`` is written to a temporary file and renamed over the old one;
2. ``summary.json`` with the final status is written (temporary file, rename): it is always the
   last output, so ``status: finished`` means every output is there;
3. only then the checkpoint and the client-state files go (finished), or the state files no
   checkpoint refers to (stopped).

A kill before step 2 leaves the checkpoint: the same command resumes from it and finishes. A kill
after it leaves a finished run with leftovers: the same command (:func:`complete_finished`) writes a
missing plot from ``metrics.csv`` and removes the checkpoint and ``state/``, then says "nothing to do".
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from fedrun.errors import os_error_in, writing
from fedrun.rundir import resume
from fedrun.rundir.files import write_json_atomic

log = logging.getLogger("fedrun")

PLOT = "convergence.png"
PLOT_BYTES = 1_000_000  # about what the PNG, PDF and SVG of a run's figure take (a full disk's sentence says it)


def write_plot(rows: list[dict[str, Any]], run_dir: Path, title: str, plot: Callable[..., Any]) -> None:
    """``convergence.png`` (and its PDF and SVG) from ``rows``, drawn by ``plot`` (``plot(rows, path,
    title)``: :func:`fedrun.observers.plot.convergence_plot`) into a temporary folder, then each file
    renamed into place: a kill leaves each figure whole or absent, and the PNG, checked for a missing
    plot, comes last."""
    run_dir = Path(run_dir)
    tmp = run_dir / ".plot.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(run_dir / PLOT, PLOT_BYTES):
            tmp.mkdir()
            plot(rows, tmp / PLOT, title)
            for made in sorted(tmp.iterdir(), key=lambda f: f.name == PLOT):
                os.replace(made, run_dir / made.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_started(run_dir: Path, config: dict[str, Any]) -> None:
    """A fresh run's placeholder summary: status running and the config that writes this run dir."""
    write_json_atomic(Path(run_dir) / resume.SUMMARY, {"status": "running", "rounds_done": 0, "config": config})


def finish_run(run_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], title: str,
               plot: Callable[..., Any], keep_checkpoint: bool = False) -> None:
    """Plot, summary (last), then the checkpoint and state files (see the module docstring);
    ``keep_checkpoint``: a finished run keeps its final checkpoint, to be continued with more rounds."""
    run_dir = Path(run_dir)
    if rows:
        write_plot(rows, run_dir, title, plot)
    write_json_atomic(run_dir / resume.SUMMARY, summary)
    resume.finish(run_dir, str(summary.get("status")), keep_checkpoint)  # finished: checkpoint, then state/; else unused state/


def title_from_config(config: dict[str, Any], data_name: Optional[str] = None) -> str:
    """The plot title of a run from its config (``data_name``: the dataset's display name)."""
    def target(group: str) -> str:
        node = config.get(group) or {}
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1] if isinstance(node, dict) else "?"

    data = data_name or target("data").removeprefix("make_").removeprefix("load_")
    return (
        f"{target('algo')} on {data} ({target('partition')}), {config.get('num_clients')} clients, "
        f"participation {config.get('participation')}, E={config.get('local_epochs')}, B={config.get('batch_size')}, "
        f"lr={config.get('lr')}, seed={config.get('seed')}"
    )


def complete_finished(run_dir: Path, summary: dict[str, Any], plot: Callable[..., Any]) -> None:
    """Finish what a finished run's last moments left undone: a missing plot (drawn by ``plot``), a
    checkpoint, ``state/``. On a read-only or full disk the run is still finished: what cannot be
    tidied is a warning."""
    try:
        _complete_finished(Path(run_dir), summary, plot)
    except Exception as err:  # noqa: BLE001 - only a read-only or full disk is forgiven here
        if os_error_in(err) is None:
            raise
        log.warning("fedrun: %s holds a finished run whose leftovers could not be tidied (%s)", run_dir, err)


def _complete_finished(run_dir: Path, summary: dict[str, Any], plot: Callable[..., Any]) -> None:
    keep = bool((summary.get("config") or {}).get("keep_checkpoint"))  # kept to be continued with more rounds
    resume.finish(run_dir, "finished", keep)  # else nothing resumes from its checkpoint or state/
    metrics = run_dir / resume.METRICS
    if (run_dir / PLOT).exists() or not metrics.is_file():
        return
    try:
        rows = [_numbers(r) for r in _read_metrics(metrics)]
    except (ValueError, UnicodeDecodeError, csv.Error):  # a junk metrics.csv: no plot to draw from it
        log.warning("fedrun: %s cannot be read, so the missing %s is not drawn", metrics, PLOT)
        return
    if rows:
        title = summary.get("plot_title") or title_from_config(summary.get("config") or {})
        write_plot(rows, run_dir, title, plot)
        log.info("fedrun: wrote the missing %s of the finished run in %s", PLOT, run_dir)


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        try:
            out[key] = float(value) if value not in ("", None) else None
        except ValueError:
            out[key] = value
    if out.get("round") is not None:
        out["round"] = int(out["round"])
    return out
