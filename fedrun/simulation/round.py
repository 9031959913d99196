"""One communication round, and the evaluation of its models.

:func:`run_round` samples the clients, opens the frozen :class:`~fedrun.algorithms.base.Round`,
trains through the engine on the algorithm's local objective, screens the results (the guard),
and applies the algorithm's client and server updates; :func:`evaluate_round` tests the server
model and the two means the reference code reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from fedrun.config.specs import RunSpec
from fedrun.engines import hetero as hetero_mod
from fedrun.simulation import guard, rounds, sampling
from fedrun.simulation.build import Experiment
from fedrun.simulation.client_eval import columns as client_columns
from fedrun.simulation.evaluation import evaluate

BYTES_PER_PARAM = 4  # float32


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
    mean_local_steps: float = math.nan  # mean local steps the round's active clients took (hetero= on; else nan)
    straggler_drops: int = 0  # stragglers' updates discarded (hetero=stragglers hetero.drop=true)


def metric_columns(spec: RunSpec) -> list[str]:
    cols = ["round", "active_clients", "lr", "train_loss", "test_loss", "test_acc"]
    if spec.evaluation.active:
        cols += ["test_loss_active", "test_acc_active"]
    if spec.evaluation.all:
        cols += ["test_loss_all", "test_acc_all"]
    if spec.guard.on_nonfinite == "drop":
        cols += ["dropped_clients"]
    cols += hetero_mod.columns(spec.groups.get("hetero"))  # mean_local_steps (and straggler_drops) under hetero
    return cols + client_columns(spec.client_eval) + ["uplink_mb", "downlink_mb", "comm_fedavg_rounds", "wall_s"]


def run_round(exp: Experiment, round_idx: int) -> RoundRecord:
    """One communication round; updates ``exp.theta``, ``exp.server`` and the store in place."""
    spec = exp.spec
    clients = sampling.clients(spec.sampling, exp.ctx.num_clients, round_idx)  # CPU: the engines read the ids on the host
    lr = spec.schedule.lr_at(round_idx)
    rnd = rounds.open_round(
        exp.algorithm, exp.ctx, exp.const, exp.store, round_idx, lr, spec.schedule.lr, exp.theta, clients.to(exp.device)
    )
    objective = exp.algorithm.local_objective(rnd, exp.server)
    hp = spec.local if lr == spec.local.lr else replace(spec.local, lr=lr)
    work = None
    if exp.hetero is not None:  # this round's local steps per client (fedrun/engines/hetero.py)
        nominal = hetero_mod.nominal_steps(objective.steps, rnd.sizes, hp.epochs, hp.batch_size)
        work = exp.hetero.work(nominal, clients, hp.epochs, spec.seed, round_idx)
        objective = replace(objective, steps=work.steps)
    result = exp.engine.train(exp.model, exp.theta, exp.data, exp.partition, clients, objective, hp, spec.seed, round_idx)
    kept = guard.screen_clients(exp.spec.guard, round_idx, clients, result)  # stop on, or drop, non-finite clients
    kept, discarded = hetero_mod.discard(kept, clients, work)  # hetero.drop: the stragglers' updates never arrive
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
        mean_local_steps=float(result.steps.double().mean()) if exp.hetero is not None and len(clients) else math.nan,
        straggler_drops=discarded,
    )


def evaluate_round(exp: Experiment, active_model: torch.Tensor, round_idx: Optional[int] = None) -> dict[str, float]:
    """Test loss and accuracy of the server model, the mean of the active clients' models
    (``active_model``, averaged as the algorithm averages) and the mean of every client's latest model
    (with ``round_idx``: only in the rounds ``eval_all_every`` names, nan in the others)."""
    d, e = exp.data, exp.spec.evaluation
    out: dict[str, float] = {}
    out["test_loss"], out["test_acc"] = evaluate(exp.model, exp.theta, d.x_test, d.y_test)
    if e.active:
        out["test_loss_active"], out["test_acc_active"] = evaluate(exp.model, active_model, d.x_test, d.y_test)
    if e.all and (round_idx is None or e.all_due(round_idx, exp.spec.rounds)):
        out["test_loss_all"], out["test_acc_all"] = evaluate(exp.model, exp.all_models.mean, d.x_test, d.y_test)
    elif e.all:  # not one of eval_all_every's rounds
        out["test_loss_all"] = out["test_acc_all"] = math.nan
    return out
