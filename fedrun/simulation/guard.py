"""Divergence guard: non-finite or exploding losses and models stop the run in the round they happen.

Checks, each naming the round, the algorithm and the hyperparameters to lower:

* a client whose loss or trained model is non-finite (``on_nonfinite=stop``, the default), or, with
  ``on_nonfinite=drop``, such clients are left out of the round (no aggregation, no state update)
  and counted in the ``dropped_clients`` metrics column; a round that drops more than half of its
  clients :data:`DROPPED_ROUNDS` rounds in a row stops the run (dropping cannot rescue it);
* a new server model that is non-finite;
* a round's mean train loss, or an evaluated round's test loss, above ``divergence_factor`` times
  the reference (0 turns these two checks off);
* a non-finite train or test loss.

The reference is computed before round 1 and cannot be poisoned by a round that already blew up:
the largest of the initial model's train loss, its test loss and ``log C`` (the cross-entropy of a
uniform predictor over C classes). A run whose first round explodes is therefore caught in round 1,
and a run whose round 1 happened to be easy (one client holding one class, train loss 0.01) is not
stopped later by a normal loss.

A :class:`~fedrun.errors.DivergenceError` carries the round and what was seen (:attr:`record`): the
runner writes no metrics row for that round, puts the record into ``summary.json`` (``diverged``)
with ``status: diverged``, and the CLI exits with code 3.

The guard reads only the run's :class:`~fedrun.config.specs.GuardSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fedrun.errors import DivergenceError
from fedrun.config.specs import GuardSpec

DROPPED_ROUNDS = 3  # rounds in a row that drop more than half of their clients before the run stops


def diverged(spec: GuardSpec, round_idx: int, what: str, **seen: Any) -> DivergenceError:
    """The error for ``round_idx``; :attr:`record` (round, reason, what was seen) goes into summary.json."""
    err = DivergenceError(f"training diverged in round {round_idx} (algo={spec.algo}): {what}; {spec.advice()}.")
    err.round = round_idx
    err.record = {"round": round_idx, "reason": what, **{k: _plain(v) for k, v in seen.items()}}
    return err


def _plain(value: Any) -> Any:
    """A JSON-safe number: non-finite floats as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@torch.no_grad()
def reference_loss(exp: Any) -> float:
    """max(initial model's train loss, its test loss, log C): computed before round 1 (the run's
    ``exp.theta`` must still be the initial model)."""
    from fedrun.simulation.evaluation import evaluate

    d = exp.data
    train, _ = evaluate(exp.model, exp.theta, d.x_train, d.y_train)
    test, _ = evaluate(exp.model, exp.theta, d.x_test, d.y_test)
    finite = [v for v in (train, test) if math.isfinite(v)]
    return max([math.log(max(int(d.num_classes), 2)), *finite])


@dataclass
class Screened:
    """The clients kept after screening and their results (rows aligned)."""

    clients: torch.Tensor
    thetas: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    dropped: int


def screen_clients(spec: GuardSpec, round_idx: int, clients: torch.Tensor, result: Any) -> Screened:
    """Stop on (or drop) clients whose loss or model is non-finite."""
    ok = torch.isfinite(result.loss.reshape(-1)).to(result.thetas.device) & torch.isfinite(result.thetas).all(dim=1)
    if bool(ok.all()):
        return Screened(clients, result.thetas, result.loss, result.steps, 0)
    bad = int((~ok).sum())
    if spec.on_nonfinite != "drop":
        first = int(clients[~ok.to(clients.device)][0])
        raise diverged(
            spec, round_idx,
            f"{bad} of {len(clients)} active clients (first: client {first}) got a non-finite loss or model "
            "(on_nonfinite=drop would leave such clients out)",
            nonfinite_clients=bad, active_clients=len(clients),
        )
    keep = ok.to(clients.device)
    return Screened(clients[keep], result.thetas[ok], result.loss.reshape(-1)[ok.to(result.loss.device)], result.steps[ok.to(result.steps.device)], bad)


def check_server(spec: GuardSpec, round_idx: int, theta: torch.Tensor) -> None:
    if not bool(torch.isfinite(theta).all()):
        raise diverged(spec, round_idx, "the new server model is non-finite")


class LossGuard:
    """Compares each round's losses with the reference; counts rounds that drop most of their clients."""

    def __init__(self, spec: GuardSpec, reference: float, dropped_streak: int = 0):
        self.spec = spec
        self.reference = float(reference)
        self.dropped_streak = int(dropped_streak)

    def limit(self) -> float:
        return self.spec.divergence_factor * self.reference

    def check_dropped(self, round_idx: int, dropped: int, active: int) -> None:
        self.dropped_streak = self.dropped_streak + 1 if dropped * 2 > active else 0
        if self.dropped_streak >= DROPPED_ROUNDS:
            raise diverged(
                self.spec, round_idx,
                f"on_nonfinite=drop left out more than half of the active clients ({dropped} of {active} now) "
                f"in each of the last {self.dropped_streak} rounds",
                dropped_clients=dropped, active_clients=active,
            )

    def check_train(self, round_idx: int, loss: float) -> None:
        if math.isnan(loss):  # every client was dropped: nothing to compare
            return
        if not math.isfinite(loss):
            raise diverged(self.spec, round_idx, f"the mean train loss is {loss}", train_loss=loss)
        if self.spec.divergence_factor > 0 and loss > self.limit():
            raise diverged(self.spec, round_idx, self._over("train loss", loss), train_loss=loss)

    def check_test(self, round_idx: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("test_loss", 0.0)
        seen = {k: metrics.get(k) for k in ("train_loss", "test_loss", "test_acc")}
        if not math.isfinite(loss):
            raise diverged(self.spec, round_idx, f"the server model's test loss is {loss}", **seen)
        if self.spec.divergence_factor > 0 and loss > self.limit():
            raise diverged(self.spec, round_idx, self._over("server model's test loss", loss), **seen)

    def _over(self, what: str, loss: float) -> str:
        return (
            f"the {what} {loss:.4g} is over divergence_factor={self.spec.divergence_factor:g} times the reference "
            f"{self.reference:.4g} (the larger of the initial model's loss and log C)"
        )
