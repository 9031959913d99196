"""A run in its run dir: start (a fresh run or a resumed one), the round loop, the finish.

:func:`run` holds the run dir's lock; :func:`start` decides what the run dir holds
(:mod:`fedrun.rundir.resume`), builds the run (:func:`fedrun.simulation.build.build`) and restores its
checkpoint; :func:`_run` is the round loop, with everything that watches the rounds as observers
(:mod:`fedrun.observers`); :class:`Ending` writes the last outputs in the order a kill cannot spoil
(:mod:`fedrun.rundir.finish`: plot, ``summary.json``, then checkpoint and state).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from fedrun import distributed
from fedrun.config import specs
from fedrun.errors import DivergenceError, FedrunError, writing
from fedrun.observers.base import Observers
from fedrun.observers.checkpoints import Checkpoints, MetricsRows
from fedrun.observers.client_eval import ClientEvaluator
from fedrun.observers.plot import convergence_plot
from fedrun.observers.progress import Progress, summary_line
from fedrun.observers.trackers import open_loggers, run_name
from fedrun.rundir import checkpoint, finish, lock, ranked, resume
from fedrun.rundir.files import MetricsWriter, summarize, write_json_atomic
from fedrun.rundir.provenance import provenance
from fedrun.rundir.signals import Interrupted, StopSignals
from fedrun.simulation import client_eval, guard
from fedrun.simulation.build import Experiment, build, resolve_device
from fedrun.simulation.determinism import configure_determinism
from fedrun.simulation.round import RoundRecord, evaluate_round, metric_columns, run_round  # noqa: F401
from fedrun.simulation.threads import apply_threads, setup_threads

log = logging.getLogger("fedrun")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run all rounds of ``cfg`` and write the outputs into ``run_dir``; returns the summary.

    The run holds ``run_dir``'s lock (:mod:`fedrun.rundir.lock`) throughout: a second run there is refused."""
    ranks = distributed.current()
    if ranks is not None and not ranks.writer:  # rank 0 holds the lock for the run
        return _run(cfg, Path(run_dir))
    with lock.lock_run_dir(run_dir):
        return _run(cfg, Path(run_dir))


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    threads = torch.get_num_threads()  # start() applies the threads rule from the set-up on (fedrun/simulation/threads.py)
    try:
        exp, writer, counters = start(cfg, run_dir)
    except BaseException:
        torch.set_num_threads(threads)
        raise
    spec, tally = exp.spec, Tally(exp.spec, counters)
    with StopSignals() as signals, Ending(exp, run_dir, writer, tally, counters.round, threads, signals) as end:  # a first signal waits for the last outputs
        watchers = end.observers + [Checkpoints(exp, run_dir, writer, tally.counters, signals, distributed.current())]
        for r in range(counters.round + 1, spec.rounds + 1):
            record = run_round(exp, r)
            tally.add(r, record)  # the loss guard, communication and the totals since the last row
            if spec.evaluation.due(r, spec.rounds):
                row = tally.row(r, record, {**evaluate_round(exp, record.active_model, r), **watchers.metrics(r, exp)})
                with writing(run_dir):  # a tracker's file on a full disk: the sentence names it (metrics.csv names itself)
                    watchers.row(r, row)  # metrics.csv, trackers, progress
            watchers.round_done(r)  # checkpoints; a stop signal ends the run here
    return end.summary


class Tally:
    """The loop's running totals: communication, what the rounds since the last metrics row add up to,
    the wall clock and the loss guard; :meth:`counters` is what a checkpoint saves of them."""

    def __init__(self, spec: specs.RunSpec, counters: checkpoint.Counters):
        self.loss_guard = guard.LossGuard(spec.guard, counters.guard_reference, counters.dropped_streak)
        self.resumed = counters  # the checkpoint's counters (its thread count is checked before the rounds)
        self.comm, self.pending = counters.comm, counters.pending
        self.began = time.perf_counter() - counters.wall_s
        self.threads = 0  # the torch thread count the rounds run with (Ending sets it), saved in checkpoints

    def wall_s(self) -> float:
        return time.perf_counter() - self.began

    def add(self, round_idx: int, record: RoundRecord) -> None:
        self.loss_guard.check_dropped(round_idx, record.dropped_clients, record.active_clients)
        self.loss_guard.check_train(round_idx, record.train_loss)
        self.comm += record.comm_fedavg_rounds
        self.pending = self.pending.add(record.train_loss, record.uplink_mb, record.downlink_mb, record.dropped_clients)

    def row(self, round_idx: int, record: RoundRecord, evaluated: dict[str, float]) -> dict[str, Any]:
        """The metrics row of an evaluated round (checked by the loss guard); the totals start again."""
        row = {
            "round": round_idx,
            "active_clients": record.active_clients,
            "lr": record.lr,
            "train_loss": self.pending.mean_train_loss(),
            **evaluated,
            "dropped_clients": self.pending.dropped_clients,
            **({} if math.isnan(record.mean_local_steps) else  # hetero= on: the row's round's work (fedrun/engines/hetero.py)
               {"mean_local_steps": record.mean_local_steps, "straggler_drops": record.straggler_drops}),
            "uplink_mb": self.pending.uplink_mb,
            "downlink_mb": self.pending.downlink_mb,
            "comm_fedavg_rounds": self.comm,
            "wall_s": self.wall_s(),
        }
        self.loss_guard.check_test(round_idx, row)
        self.pending = checkpoint.Pending()
        return row

    def counters(self, round_idx: int) -> checkpoint.Counters:
        g = self.loss_guard
        return checkpoint.Counters(round_idx, self.comm, self.pending, self.wall_s(), g.reference, g.dropped_streak, self.threads)


class Ending:
    """The end of a run, whatever ends it (the ``with`` block around the loop).

    On entry: the torch threads for this run, and the observers that watch it (per-client
    evaluation, ``metrics.csv``, trackers, progress). On exit: the status (finished, diverged,
    interrupted, failed), the summary, the last outputs (rank 0), the trackers closed with the
    summary and the threads restored. A run already failing reports its own error, not the outputs'.
    ``signals``: told when a finished run's last outputs start, so that a second signal then says
    what the run dir holds (the checkpoint to finish from), not "before the round finished".
    """

    def __init__(self, exp: Experiment, run_dir: Path, writer: MetricsWriter, tally: Tally, resumed_round: int,
                 threads_before: Optional[int] = None, signals: Optional[StopSignals] = None):
        spec = exp.spec
        self.signals, self.resumed_round = signals, resumed_round
        self.exp, self.run_dir, self.writer, self.tally = exp, run_dir, writer, tally
        before, threads_choice = apply_threads(spec.threads, exp, default=threads_before)
        self.threads_before = before if threads_before is None else threads_before  # the count before start()
        log.info("fedrun: %d torch thread(s) (%s)", threads_choice["threads"], threads_choice["rule"])
        ranks = distributed.current()  # several processes: rank 0 writes the run dir
        try:  # a resumed run's rounds must run with its checkpoint's thread count (the numbers depend on it)
            tally.threads = torch.get_num_threads()
            refused: Optional[FedrunError] = None
            try:
                checkpoint.check_threads(tally.resumed, tally.threads, exp.device, run_dir / checkpoint.CHECKPOINT)
            except FedrunError as err:
                refused = err
            if ranks is not None:
                distributed.agree(ranks, refused)  # every rank stops, not only the one that refuses
            elif refused is not None:
                raise refused
        except BaseException:  # refused: nothing was run, the threads go back
            torch.set_num_threads(self.threads_before)
            raise
        self.made_by = provenance(exp.device)
        self.writes = ranks is None or ranks.writer
        per_client = ClientEvaluator(spec.client_eval, exp, exp.held_out, run_dir, resumed_round) if exp.held_out and self.writes else None
        try:
            with writing(run_dir):  # a tracker's files on a full disk: one DiskFull sentence
                trackers = open_loggers(spec.loggers if self.writes else (), run_dir, spec.config,
                                        run_name(spec.config, spec.options, exp.data.name, type(exp.algorithm).__name__))
        except FedrunError as err:  # a tracker that cannot start: the run dir says failed, not running
            torch.set_num_threads(self.threads_before)
            write_json_atomic(run_dir / resume.SUMMARY, {"status": "failed", "error": str(err), "rounds_done": resumed_round,
                                                         "config": spec.config})
            raise
        progress = Progress(spec.rounds, start=resumed_round, enabled=spec.progress if self.writes else False, quiet=spec.quiet,
                            device=exp.device.type if self.writes else None)
        self.observers = Observers([per_client, MetricsRows(writer), trackers, progress])
        self.extra: dict[str, Any] = {"plot_title": f"{type(exp.algorithm).__name__} on {exp.data.name} {spec.title()}",
                                      "threads_choice": threads_choice}
        self.summary: dict[str, Any] = {}

    def __enter__(self) -> "Ending":
        return self

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        status = "finished" if kind is None else "failed"
        if isinstance(err, DivergenceError):
            status = "diverged"
            self.extra["diverged"] = getattr(err, "record", None)  # the diverged round: never a metrics row
        elif isinstance(err, Interrupted):
            status = "interrupted"
        exp, rows, keep = self.exp, self.writer.rows, self.exp.spec.keep_checkpoint
        self.observers.stop()
        self.extra.update({**self.made_by, **client_eval.summary(rows)})
        self.summary = {**summarize(rows, status, self.tally.wall_s(), exp.model.num_params, exp.spec.config), **self.extra}
        try:  # plot, summary.json last, then checkpoint and state (fedrun/rundir/finish.py)
            if self.writes:
                if self.signals is not None and status == "finished":  # a second signal now: say what the run dir holds
                    saved = self.signals.saved_round
                    if saved is None and (self.run_dir / checkpoint.CHECKPOINT).exists():
                        saved = self.resumed_round  # the checkpoint this run resumed from
                    self.signals.writing_outputs(self.run_dir, exp.spec.rounds, saved)
                finish.finish_run(self.run_dir, rows, self.summary, self.extra["plot_title"], run_plot(exp), keep)
                if not keep:
                    ranked.finish(self.run_dir, status)  # after checkpoint.pt, which refers to the shards
        except Exception as failure:  # noqa: BLE001 - a run already failing reports its own error
            if status == "finished":
                raise
            log.error("fedrun: the outputs of the stopped run could not all be written (%s)", failure)
        finally:
            try:
                with writing(self.run_dir):
                    self.observers.close(self.summary)
            finally:
                torch.set_num_threads(self.threads_before)
            if self.writes:  # the run's last line, quiet or not
                log.info("%s", summary_line(self.summary, self.run_dir, exp.spec.rounds))
        return False


def run_plot(exp: Any = None) -> Any:
    """The per-run convergence plot, styled for the run's algorithm."""
    return functools.partial(convergence_plot, algo=type(exp.algorithm).__name__) if exp is not None else convergence_plot


def start(cfg: DictConfig, run_dir: Path) -> tuple[Experiment, MetricsWriter, checkpoint.Counters]:
    """Decide what to do with ``run_dir`` (:mod:`fedrun.rundir.resume`), build the run and restore its checkpoint."""
    spec = specs.read(cfg)
    log.debug("fedrun: %s", spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks = distributed.current()
    try:
        resumed = ranked.decide(spec.resume, run_dir, ranks)  # a checkpoint to continue from, or None; refuses a changed config
    except resume.RunFinished as done:
        if ranks is None or ranks.writer:
            finish.complete_finished(run_dir, done.summary, run_plot())  # a missing plot, a leftover checkpoint or state/
        raise
    configure_determinism(spec.numerics)
    setup_threads(spec.threads, resolve_device(spec.device))  # building a run follows the threads rule too
    placement, reuse = None, False
    if resumed is not None:
        checkpoint.roll_back_files(run_dir, resumed)  # mmap client state: the files as of the checkpoint
        placement = checkpoint.placement(resumed, spec.placement.requested, run_dir / checkpoint.CHECKPOINT)
        reuse = "files" in resumed["store"]
    exp = build(spec, checkpoint.state_dir(run_dir), placement, reuse)
    writer = (MetricsWriter if ranks is None or ranks.writer else ranked.RowsOnly)(run_dir / resume.METRICS, metric_columns(spec))
    # the guard's reference: the initial model's losses, so computed before a checkpoint is restored
    known = resumed is not None and resumed["counters"].get("guard_reference") is not None
    reference = None if known else guard.reference_loss(exp)
    counters = checkpoint.Counters(guard_reference=reference)
    if resumed is None:
        if ranks is None or ranks.writer:
            finish.write_started(run_dir, spec.config)  # says which config writes metrics.csv before any checkpoint does
    else:
        counters = ranked.restore(resumed, exp, run_dir, ranks)
        if counters.guard_reference is None:
            counters = replace(counters, guard_reference=reference)
        writer.rewrite(resumed["rows"])  # metrics.csv from the checkpoint's rows, whatever the file holds now
        log.info("fedrun: resuming %s after round %d", run_dir, counters.round)
    log.info(
        "fedrun: %s on %s (%d clients, %d params, device %s) -> %s",
        type(exp.algorithm).__name__, exp.data.name, exp.ctx.num_clients, exp.model.num_params, exp.device, run_dir,
    )
    log.debug("fedrun: client state %s (%s), engine %s", type(exp.store).__name__, exp.store.placement, exp.engine)
    return exp, writer, counters
