"""The round loop: config → data → partition → model → algorithm → engine → evaluation → outputs.

:func:`build` turns a composed config into the objects of a run; :func:`run` executes the rounds
and writes ``metrics.csv`` (one row per evaluated round, flushed at once), ``summary.json`` and
``convergence.png`` into the run directory.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from fedrun import checkpoint, client_eval, distributed, finish, guard, lock, ranked_checkpoint, rounds, rundir, sharded, specs
from fedrun.algorithms.base import Algorithm, FedContext, ServerState
from fedrun.all_models import AllModelsMean
from fedrun.config import build_object
from fedrun.data import FederatedData
from fedrun.determinism import configure_determinism
from fedrun.engines.base import Engine
from fedrun.errors import DivergenceError, FedrunError, writing
from fedrun.evaluation import evaluate
from fedrun.fit import build_model
from fedrun.memory import check_data_fits
from fedrun.loggers import open_loggers
from fedrun.run_files import MetricsWriter, summarize
from fedrun.params import FlatModel
from fedrun.partition import check_partition
from fedrun.plots import convergence_plot
from fedrun.progress import Progress
from fedrun.provenance import provenance
from fedrun.seeding import derive_seed, generator
from fedrun.signals import Interrupted, StopSignals
from fedrun.specs import RunSpec
from fedrun.state import ClientStateStore, store_for_run
from fedrun.threads import apply_threads

log = logging.getLogger("fedrun")

BYTES_PER_PARAM = 4  # float32


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FedrunError("device=cuda was asked for but torch sees no CUDA GPU: use device=auto or device=cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run needs, built from its spec."""

    spec: RunSpec
    device: torch.device
    data: FederatedData
    partition: list[torch.Tensor]
    model: FlatModel
    theta: torch.Tensor
    algorithm: Algorithm
    engine: Engine
    store: ClientStateStore
    ctx: FedContext
    server: ServerState
    const: Any = None  # what algorithm.setup returned
    all_models: Optional[AllModelsMean] = None  # the evaluated mean of every client's latest model (eval_all)
    held_out: Optional[client_eval.HeldOut] = None  # each client's own test split and the validation split


@dataclass(frozen=True)
class RoundRecord:
    """What one round did (``train_loss`` nan: every client of the round was dropped)."""

    active_clients: int
    lr: float
    train_loss: float
    uplink_mb: float
    downlink_mb: float
    comm_fedavg_rounds: float
    client_thetas: torch.Tensor  # the kept clients' models (the server model when none was kept)
    active_model: torch.Tensor  # their mean, averaged as the algorithm averages
    dropped_clients: int


def build(cfg: DictConfig, state_dir: Optional[Path] = None, resumed: Optional[dict[str, Any]] = None,
          spec: Optional[RunSpec] = None) -> Experiment:
    """Read ``cfg`` (:func:`fedrun.specs.read`) and build data, partition, model, algorithm, engine and state.

    ``state_dir``: where durable memory-mapped client state lives (none: scratch files). ``resumed``:
    the checkpoint the run continues from, whose placement and files the store takes over.
    """
    spec = spec or specs.read(cfg)  # run() has read it already
    device = resolve_device(spec.device)
    m, seed, groups = spec.num_clients, spec.seed, spec.groups
    data: FederatedData = build_object(groups["data"], num_clients=m, seed=seed)
    partitioner = build_object(groups["partition"], _partial_=True)
    kwargs = {} if data.groups is None else {"groups": data.groups}
    partition = partitioner(data.y_train, m, generator(seed, "partition"), **kwargs)
    check_partition(partition, len(data.y_train), m, str(groups["partition"]._target_))  # a custom partitioner's output too
    partition, held_out = client_eval.hold_out(spec.client_eval, partition)  # each client's own test / validation parts
    check_data_fits(data, device)  # one sentence instead of a CUDA out-of-memory traceback
    data = data.to(device)
    partition = [p.to(device) for p in partition]
    torch.manual_seed(derive_seed(seed, "model"))
    module = build_model(cfg, data)  # one sentence when the model cannot take the data's inputs
    model = FlatModel(module).to(device)
    theta = model.initial_vector().to(device)
    algorithm: Algorithm = build_object(groups["algo"], _convert_="all")
    engine: Engine = build_object(groups["engine"], _convert_="all")
    sizes = torch.tensor([len(p) for p in partition], dtype=torch.long)
    ctx = FedContext(m, model.num_params, sizes, spec.local.batch_size, spec.local.epochs, device)
    ranks = distributed.current()  # several processes: this rank's rows of the state, its share of the training
    if ranks is None:
        store = _store(spec, data, model, algorithm, device, state_dir, resumed)
    else:
        store, engine = sharded.store_for_rank(spec, data, model, algorithm, device, ranks), sharded.ShardedEngine(engine, ranks)
    const = algorithm.setup(ctx)
    rounds.add_tables(algorithm, store)
    server = algorithm.initial_server(theta, const)
    all_models = AllModelsMean(store, theta, algorithm.all_weights(ctx)) if spec.evaluation.all else None
    return Experiment(spec, device, data, partition, model, theta, algorithm, engine, store, ctx, server, const, all_models, held_out)


def _store(spec: RunSpec, data, model, algorithm, device, state_dir, resumed) -> ClientStateStore:
    """The client-state store, placed by estimated size; a resumed run keeps its checkpoint's placement."""
    p = spec.placement
    requested, reuse = p.requested, False
    if resumed is not None:
        requested = checkpoint.placement(resumed, requested, Path(state_dir or ".").parent / checkpoint.CHECKPOINT)
        reuse = "files" in resumed["store"]
    tables = len(algorithm.client_states) + int(spec.evaluation.all)
    return store_for_run(requested, spec.num_clients, p.participation, p.batch_size, tables, data, model, device, state_dir, reuse)


def metric_columns(spec: RunSpec) -> list[str]:
    cols = ["round", "active_clients", "lr", "train_loss", "test_loss", "test_acc"]
    if spec.evaluation.active:
        cols += ["test_loss_active", "test_acc_active"]
    if spec.evaluation.all:
        cols += ["test_loss_all", "test_acc_all"]
    if spec.guard.on_nonfinite == "drop":
        cols += ["dropped_clients"]
    return cols + client_eval.columns(spec.client_eval) + ["uplink_mb", "downlink_mb", "comm_fedavg_rounds", "wall_s"]


def run_round(exp: Experiment, round_idx: int) -> RoundRecord:
    """One communication round; updates ``exp.theta``, ``exp.server`` and the store in place."""
    spec = exp.spec
    clients = spec.sampling.clients(exp.ctx.num_clients, round_idx).to(exp.device)
    lr = spec.schedule.lr_at(round_idx)
    rnd = rounds.open_round(exp.algorithm, exp.ctx, exp.const, exp.store, round_idx, lr, spec.schedule.lr, exp.theta, clients)
    objective = exp.algorithm.local_objective(rnd, exp.server)
    hp = spec.local if lr == spec.local.lr else replace(spec.local, lr=lr)
    result = exp.engine.train(exp.model, exp.theta, exp.data, exp.partition, clients, objective, hp, spec.seed, round_idx)
    kept = guard.screen_clients(exp.spec.guard, round_idx, clients, result)  # stop on, or drop, non-finite clients
    rnd = rnd.finished(kept.clients, kept.steps, objective.hook.result() if objective.hook else {})
    train_loss = float(kept.loss.mean()) if len(kept.clients) else math.nan
    if len(kept.clients):  # every client dropped: the round changes nothing
        new_rows = exp.algorithm.client_update(rnd, exp.server, kept.thetas)
        theta, exp.server = exp.algorithm.server_update(rnd, exp.server, kept.thetas, new_rows)
        guard.check_server(exp.spec.guard, round_idx, theta)
        rounds.write_rows(exp.store, rnd, new_rows)
        if exp.all_models is not None:
            exp.all_models.update(kept.clients, kept.thetas)
        exp.theta = theta
    mb = len(clients) * exp.model.num_params * BYTES_PER_PARAM / 1e6
    return RoundRecord(
        active_clients=len(clients),
        lr=lr,
        train_loss=train_loss,
        uplink_mb=mb * exp.algorithm.uplink,
        downlink_mb=mb * exp.algorithm.downlink,
        comm_fedavg_rounds=(exp.algorithm.uplink + exp.algorithm.downlink) / 2,
        client_thetas=kept.thetas if len(kept.clients) else exp.theta[None, :],
        active_model=exp.algorithm.average(kept.thetas, rnd.sizes) if len(kept.clients) else exp.theta,
        dropped_clients=kept.dropped,
    )


def evaluate_round(exp: Experiment, active_model: torch.Tensor) -> dict[str, float]:
    """Test loss and accuracy of the server model, the mean of the active clients' models
    (``active_model``, averaged as the algorithm averages) and the mean of every client's latest model."""
    d, e = exp.data, exp.spec.evaluation
    out: dict[str, float] = {}
    out["test_loss"], out["test_acc"] = evaluate(exp.model, exp.theta, d.x_test, d.y_test)
    if e.active:
        out["test_loss_active"], out["test_acc_active"] = evaluate(exp.model, active_model, d.x_test, d.y_test)
    if e.all:
        out["test_loss_all"], out["test_acc_all"] = evaluate(exp.model, exp.all_models.mean, d.x_test, d.y_test)
    return out


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run all rounds of ``cfg`` and write the outputs into ``run_dir``; returns the summary.

    The run holds ``run_dir``'s lock (:mod:`fedrun.lock`) throughout: a second run there is refused."""
    ranks = distributed.current()
    if ranks is not None and not ranks.writer:  # rank 0 holds the lock for the run
        return _run(cfg, Path(run_dir))
    with lock.lock_run_dir(run_dir):
        return _run(cfg, Path(run_dir))


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    exp, writer, counters = start(cfg, run_dir)
    spec, rounds = exp.spec, exp.spec.rounds
    loss_guard = guard.LossGuard(spec.guard, counters.guard_reference, counters.dropped_streak)
    comm, pending = counters.comm, counters.pending
    threads_before = apply_threads(spec.threads, exp.model.num_params, exp.device)
    threads = torch.get_num_threads()
    made_by = provenance(exp.device)
    ranks = distributed.current()  # several processes: collective checkpoints, rank 0 writes the run dir
    try:  # a resumed run's rounds must run with its checkpoint's thread count (the numbers depend on it)
        refused: Optional[FedrunError] = None
        try:
            checkpoint.check_threads(counters, threads, exp.device, run_dir / checkpoint.CHECKPOINT)
        except FedrunError as err:
            refused = err
        if ranks is not None:
            distributed.agree(ranks, refused)  # every rank stops, not only the one that refuses
        elif refused is not None:
            raise refused
    except BaseException:
        torch.set_num_threads(threads_before)
        raise
    writes = ranks is None or ranks.writer
    per_client = client_eval.ClientEvaluator(spec.client_eval, exp, exp.held_out, run_dir, counters.round) if exp.held_out and writes else None
    with writing(run_dir):
        trackers = open_loggers(spec.loggers if writes else (), run_dir, spec.config)
    keep = spec.keep_checkpoint
    progress = Progress(rounds, start=counters.round, enabled=spec.progress if writes else False,
                        quiet=spec.quiet)
    began = time.perf_counter() - counters.wall_s
    status, extra = "failed", {"plot_title": f"{type(exp.algorithm).__name__} on {exp.data.name} {spec.title()}"}
    plot = functools.partial(convergence_plot, algo=type(exp.algorithm).__name__)
    with StopSignals() as signals:  # held through the last outputs: a first signal then waits for them
        try:
            for r in range(counters.round + 1, rounds + 1):
                record = run_round(exp, r)
                loss_guard.check_dropped(r, record.dropped_clients, record.active_clients)
                loss_guard.check_train(r, record.train_loss)
                comm += record.comm_fedavg_rounds
                pending = pending.add(record.train_loss, record.uplink_mb, record.downlink_mb, record.dropped_clients)
                if spec.evaluation.due(r, rounds):
                    row = {
                        "round": r,
                        "active_clients": record.active_clients,
                        "lr": record.lr,
                        "train_loss": pending.mean_train_loss(),
                        **evaluate_round(exp, record.active_model),
                        **(per_client.evaluate(r, exp.theta) if per_client else {}),
                        "dropped_clients": pending.dropped_clients,
                        "uplink_mb": pending.uplink_mb,
                        "downlink_mb": pending.downlink_mb,
                        "comm_fedavg_rounds": comm,
                        "wall_s": time.perf_counter() - began,
                    }
                    loss_guard.check_test(r, row)
                    writer.write(row)
                    with writing(run_dir):  # a tracker's file on a full disk: the sentence names it
                        trackers.log(row)
                    pending = checkpoint.Pending()
                    progress.update(r, rounds, row["test_acc"], row["test_loss"], row["wall_s"] / r)
                stop = ranked_checkpoint.stop_requested(signals, ranks) and r < rounds  # a signal during the last round: just finish
                if stop or spec.checkpoint.due(r, rounds) or (keep and r == rounds):  # keep: the final state, to continue later
                    counters = checkpoint.Counters(
                        r, comm, pending, time.perf_counter() - began, loss_guard.reference, loss_guard.dropped_streak, threads
                    )
                    ranked_checkpoint.save(run_dir, exp, counters, writer.rows, ranks)
                if stop:
                    raise signals.stop(r, rounds, run_dir)
            status = "finished"
        except DivergenceError as err:
            status = "diverged"
            extra["diverged"] = getattr(err, "record", None)  # the diverged round: never a metrics row
            raise
        except Interrupted:
            status = "interrupted"
            raise
        finally:
            progress.close()
            extra.update({**made_by, **client_eval.summary(writer.rows)})
            summary = {**summarize(writer.rows, status, time.perf_counter() - began, exp.model.num_params, spec.config), **extra}
            try:  # plot, summary.json last, then checkpoint and state (fedrun/finish.py); rank 0 writes the run dir
                if writes:
                    finish.finish_run(run_dir, writer.rows, summary, extra["plot_title"], plot, keep)
                    if not keep:
                        ranked_checkpoint.finish(run_dir, status)  # after checkpoint.pt, which refers to the shards
            except Exception as err:  # noqa: BLE001 - a run already failing reports its own error
                if status == "finished":
                    raise
                log.error("fedrun: the outputs of the stopped run could not all be written (%s)", err)
            finally:
                try:
                    with writing(run_dir):
                        trackers.close(summary)
                finally:
                    torch.set_num_threads(threads_before)
    return summary


def start(cfg: DictConfig, run_dir: Path) -> tuple[Experiment, MetricsWriter, checkpoint.Counters]:
    """Decide what to do with ``run_dir`` (:mod:`fedrun.rundir`), build the run and restore its checkpoint."""
    spec = specs.read(cfg)
    log.debug("fedrun: %s", spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks = distributed.current()
    resumed = ranked_checkpoint.decide(spec.resume, run_dir, ranks)  # a checkpoint to continue from, or None; refuses a changed config
    configure_determinism(spec.numerics)
    if resumed is not None:
        checkpoint.roll_back_files(run_dir, resumed)  # mmap client state: the files as of the checkpoint
    exp = build(cfg, checkpoint.state_dir(run_dir), resumed, spec)
    writer = (MetricsWriter if ranks is None or ranks.writer else ranked_checkpoint.RowsOnly)(run_dir / rundir.METRICS, metric_columns(spec))
    # the guard's reference: the initial model's losses, so computed before a checkpoint is restored
    known = resumed is not None and resumed["counters"].get("guard_reference") is not None
    reference = None if known else guard.reference_loss(exp)
    counters = checkpoint.Counters(guard_reference=reference)
    if resumed is None:
        if ranks is None or ranks.writer:
            finish.write_started(run_dir, spec.config)  # says which config writes metrics.csv before any checkpoint does
    else:
        counters = ranked_checkpoint.restore(resumed, exp, run_dir, ranks)
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
