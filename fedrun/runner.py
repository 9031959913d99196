"""The round loop: config → data → partition → model → algorithm → engine → evaluation → outputs.

:func:`build` turns a composed config into the objects of a run; :func:`run` executes the rounds
and writes ``metrics.csv`` (one row per evaluated round, flushed at once), ``summary.json`` and
``convergence.png`` into the run directory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from fedrun.algorithms.base import Algorithm, FedContext, ServerState
from fedrun import checkpoint, client_eval, guard, rounds
from fedrun.all_models import AllModelsMean
from fedrun.config import build_object, choice, validate
from fedrun.data import FederatedData
from fedrun.determinism import configure_determinism
from fedrun.engines.base import Engine, LocalTraining
from fedrun.errors import DivergenceError, FedrunError
from fedrun.evaluation import evaluate
from fedrun.memory import check_data_fits
from fedrun.run_files import MetricsWriter, summarize, write_json_atomic
from fedrun.params import FlatModel
from fedrun.partition import check_partition
from fedrun.loggers import open_loggers
from fedrun.plots import convergence_plot
from fedrun.provenance import provenance
from fedrun.progress import Progress
from fedrun.sampling import SAMPLERS
from fedrun.seeding import derive_seed, generator
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
    """Everything a run needs, built from the config."""

    cfg: DictConfig
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


def build(cfg: DictConfig, state_dir: Optional[Path] = None, state_files: str = "scratch") -> Experiment:
    """Validate ``cfg`` and build data, partition, model, algorithm, engine and state.

    ``state_dir``/``state_files``: where memory-mapped client state lives and whether its files are
    scratch, new durable files or a checkpoint's files to reuse (:class:`~fedrun.state.ClientStateStore`).
    """
    validate(cfg)
    device = resolve_device(choice(cfg.device))
    m, seed = int(cfg.num_clients), int(cfg.seed)
    data: FederatedData = build_object(cfg.data, num_clients=m, seed=seed)
    partitioner = build_object(cfg.partition, _partial_=True)
    kwargs = {} if data.groups is None else {"groups": data.groups}
    partition = partitioner(data.y_train, m, generator(seed, "partition"), **kwargs)
    check_partition(partition, len(data.y_train), m, str(cfg.partition._target_))  # a custom partitioner's output too
    partition, held_out = client_eval.hold_out(cfg, partition, seed)  # each client's own test / validation parts
    check_data_fits(data, device)  # one sentence instead of a CUDA out-of-memory traceback
    data = data.to(device)
    partition = [p.to(device) for p in partition]
    torch.manual_seed(derive_seed(seed, "model"))
    module = build_object(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes, _convert_="all")
    model = FlatModel(module).to(device)
    theta = model.initial_vector().to(device)
    algorithm: Algorithm = build_object(cfg.algo, _convert_="all")
    engine: Engine = build_object(cfg.engine, _convert_="all")
    sizes = torch.tensor([len(p) for p in partition], dtype=torch.long)
    ctx = FedContext(m, model.num_params, sizes, int(cfg.batch_size), int(cfg.local_epochs), device)
    store = store_for_run(cfg, data, model, algorithm, device, state_dir, state_files)  # placement by estimated size
    const = algorithm.setup(ctx)
    rounds.add_tables(algorithm, store)
    server = algorithm.initial_server(theta, const)
    all_models = AllModelsMean(store, theta, algorithm.all_weights(ctx)) if cfg.eval_all else None
    return Experiment(cfg, device, data, partition, model, theta, algorithm, engine, store, ctx, server, const, all_models, held_out)


def metric_columns(cfg: DictConfig) -> list[str]:
    cols = ["round", "active_clients", "lr", "train_loss", "test_loss", "test_acc"]
    if cfg.eval_active:
        cols += ["test_loss_active", "test_acc_active"]
    if cfg.eval_all:
        cols += ["test_loss_all", "test_acc_all"]
    if guard.on_nonfinite(cfg) == "drop":
        cols += ["dropped_clients"]
    return cols + client_eval.columns(cfg) + ["uplink_mb", "downlink_mb", "comm_fedavg_rounds", "wall_s"]


def run_round(exp: Experiment, round_idx: int) -> dict[str, Any]:
    """One communication round; updates ``exp.theta``, ``exp.server`` and the store in place."""
    cfg = exp.cfg
    sampler = SAMPLERS[choice(cfg.sampling)]
    clients = sampler(exp.ctx.num_clients, float(cfg.participation), int(cfg.seed), round_idx).to(exp.device)
    lr = float(cfg.lr) * float(cfg.lr_decay) ** (round_idx - 1)
    rnd = rounds.open_round(exp.algorithm, exp.ctx, exp.const, exp.store, round_idx, lr, float(cfg.lr), exp.theta, clients)
    objective = exp.algorithm.local_objective(rnd, exp.server)
    hp = LocalTraining(
        lr, int(cfg.local_epochs), int(cfg.batch_size), float(cfg.weight_decay), float(cfg.clip_norm),
        bf16=choice(cfg.get("precision", "fp32")) == "bf16",
    )
    result = exp.engine.train(exp.model, exp.theta, exp.data, exp.partition, clients, objective, hp, int(cfg.seed), round_idx)
    kept = guard.screen_clients(cfg, round_idx, clients, result)  # stop on, or drop, non-finite clients
    rnd = rnd.finished(kept.clients, kept.steps, objective.hook.result() if objective.hook else {})
    train_loss = float(kept.loss.mean()) if len(kept.clients) else math.nan
    if len(kept.clients):  # every client dropped: the round changes nothing
        new_rows = exp.algorithm.client_update(rnd, exp.server, kept.thetas)
        theta, exp.server = exp.algorithm.server_update(rnd, exp.server, kept.thetas, new_rows)
        guard.check_server(cfg, round_idx, theta)
        rounds.write_rows(exp.store, rnd, new_rows)
        if exp.all_models is not None:
            exp.all_models.update(kept.clients, kept.thetas)
        exp.theta = theta
    mb = len(clients) * exp.model.num_params * BYTES_PER_PARAM / 1e6
    return {
        "active_clients": len(clients),
        "lr": lr,
        "train_loss": train_loss,
        "uplink_mb": mb * exp.algorithm.uplink,
        "downlink_mb": mb * exp.algorithm.downlink,
        "comm_fedavg_rounds": (exp.algorithm.uplink + exp.algorithm.downlink) / 2,
        "client_thetas": kept.thetas if len(kept.clients) else exp.theta[None, :],
        "active_model": exp.algorithm.average(kept.thetas, rnd.sizes) if len(kept.clients) else exp.theta,
        "dropped_clients": kept.dropped,
    }


def evaluate_round(exp: Experiment, active_model: torch.Tensor) -> dict[str, float]:
    """Test loss and accuracy of the server model, the mean of the active clients' models
    (``active_model``, averaged as the algorithm averages) and the mean of every client's latest model."""
    d = exp.data
    out: dict[str, float] = {}
    out["test_loss"], out["test_acc"] = evaluate(exp.model, exp.theta, d.x_test, d.y_test)
    if exp.cfg.eval_active:
        out["test_loss_active"], out["test_acc_active"] = evaluate(exp.model, active_model, d.x_test, d.y_test)
    if exp.cfg.eval_all:
        out["test_loss_all"], out["test_acc_all"] = evaluate(exp.model, exp.all_models.mean, d.x_test, d.y_test)
    return out


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run all rounds of ``cfg`` and write the outputs into ``run_dir``; returns the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = checkpoint.check_run_dir(cfg, run_dir)  # a checkpoint to continue from, or None; refuses a changed config
    configure_determinism(cfg)
    # mmap client state: durable files in <run dir>/state/, rolled back to the checkpoint when it refers to them
    exp = build(cfg, checkpoint.state_dir(run_dir), checkpoint.prepare_state_files(run_dir, resumed))
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    writer = MetricsWriter(run_dir / "metrics.csv", metric_columns(cfg))
    counters = checkpoint.Counters() if resumed is None else checkpoint.restore(resumed, exp, writer.path)
    if resumed is not None:
        writer.rows = list(resumed["rows"])
        log.info("fedrun: resuming %s after round %d", run_dir, counters.round)
    threads_before = apply_threads(cfg.get("threads"), exp.model.num_params, exp.device)
    made_by = provenance(exp.device)
    per_client = client_eval.ClientEvaluator(cfg, exp, exp.held_out, run_dir, counters.round) if exp.held_out else None
    trackers = open_loggers(cfg, run_dir, config)
    loss_guard = guard.LossGuard(cfg, counters.extra.get("reference_loss"))
    signals = checkpoint.StopSignals()
    rounds = int(cfg.rounds)
    log.info(
        "fedrun: %s on %s (%d clients, %d params, device %s) -> %s",
        type(exp.algorithm).__name__, exp.data.name, exp.ctx.num_clients, exp.model.num_params, exp.device, run_dir,
    )
    progress = Progress(rounds, start=counters.round, enabled=cfg.progress, quiet=bool(cfg.get("quiet", False)))
    start = time.perf_counter() - counters.wall_s
    pending = counters.pending
    comm = counters.comm
    status = "running"
    signals.install()
    try:
        for r in range(counters.round + 1, rounds + 1):
            step = run_round(exp, r)
            loss_guard.check_train(r, step["train_loss"])
            comm += step["comm_fedavg_rounds"]
            if math.isfinite(step["train_loss"]):  # nan: every client of the round was dropped
                pending["train_loss"].append(step["train_loss"])
            pending["dropped_clients"] = pending.get("dropped_clients", 0) + step["dropped_clients"]
            pending["uplink_mb"] += step["uplink_mb"]
            pending["downlink_mb"] += step["downlink_mb"]
            if r % int(cfg.eval_every) == 0 or r == rounds:
                row = {
                    "round": r,
                    "active_clients": step["active_clients"],
                    "lr": step["lr"],
                    "train_loss": sum(pending["train_loss"]) / len(pending["train_loss"]) if pending["train_loss"] else math.nan,
                    **evaluate_round(exp, step["active_model"]),
                    **(per_client.evaluate(r, exp.theta) if per_client else {}),
                    "dropped_clients": pending.get("dropped_clients", 0),
                    "uplink_mb": pending["uplink_mb"],
                    "downlink_mb": pending["downlink_mb"],
                    "comm_fedavg_rounds": comm,
                    "wall_s": time.perf_counter() - start,
                }
                loss_guard.check_test(r, row)
                writer.write(row)
                trackers.log(row)
                pending = {"train_loss": [], "uplink_mb": 0.0, "downlink_mb": 0.0}
                progress.update(r, rounds, row["test_acc"], row["test_loss"], row["wall_s"] / r)
            state = checkpoint.Counters(r, comm, pending, time.perf_counter() - start, {"reference_loss": loss_guard.reference})
            checkpoint.after_round(cfg, run_dir, exp, state, writer.rows, signals)  # periodic / on-signal checkpoint
            if r == rounds and cfg.get("keep_checkpoint"):  # the final state, to continue later with a larger rounds=
                checkpoint.save(run_dir, exp, state, writer.rows)
        status = "finished"
    except DivergenceError:
        status = "diverged"
        raise
    except checkpoint.Interrupted:
        status = "interrupted"
        raise
    finally:
        signals.restore()
        progress.close()
        seconds = time.perf_counter() - start
        if status == "running":
            status = "failed"
        summary = summarize(writer.rows, status, seconds, exp.model.num_params, config, {**made_by, **client_eval.summary(writer.rows)})
        write_json_atomic(run_dir / "summary.json", summary)
        trackers.close(summary)
        torch.set_num_threads(threads_before)
        if status == "finished":  # only now: a kill before this line leaves the checkpoint to resume from
            if not cfg.get("keep_checkpoint"):  # kept: the final state, to continue with a larger rounds=
                checkpoint.remove(run_dir)
        else:  # state files no checkpoint refers to cannot be resumed from
            checkpoint.remove_unused_state(run_dir)
        if writer.rows:
            convergence_plot(writer.rows, run_dir / "convergence.png", plot_title(cfg, exp), type(exp.algorithm).__name__)
    return summary


def plot_title(cfg: DictConfig, exp: Experiment) -> str:
    from fedrun.plots import run_title

    return run_title(cfg, exp.data.name, exp.ctx.num_clients)
