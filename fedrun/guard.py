"""Divergence guard: non-finite or exploding losses and models stop the run with one sentence.

Checks, each naming the round, the algorithm and the hyperparameters to lower:

* a client whose loss or trained model is non-finite (``on_nonfinite=stop``, the default), or, with
  ``on_nonfinite=drop``, such clients are left out of the round (no aggregation, no state update)
  and counted in the ``dropped_clients`` metrics column;
* a new server model that is non-finite;
* a round's mean train loss above ``divergence_factor`` times round 1's (0 turns this check off);
* a non-finite test loss.

A :class:`~fedrun.errors.DivergenceError` makes the runner write ``status: diverged`` to
``summary.json`` and the CLI exit with code 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from fedrun.config import choice
from fedrun.errors import DivergenceError

# Algorithm hyperparameters whose lowering typically calms a diverging run.
LOWERABLE = ("alpha", "mu", "server_lr", "tau")


def algo_name(cfg: DictConfig) -> str:
    return str(cfg.algo._target_).rsplit(".", 1)[-1]


def advice(cfg: DictConfig) -> str:
    """``lower lr=0.1 (or algo.alpha=0.01)``: the knobs of this config to turn down."""
    knobs = [f"algo.{k}={cfg.algo[k]}" for k in LOWERABLE if k in cfg.algo and isinstance(cfg.algo[k], (int, float))]
    extra = f" (or {', '.join(knobs)})" if knobs else ""
    return f"lower lr={cfg.lr}{extra}"


def diverged(cfg: DictConfig, round_idx: int, what: str) -> DivergenceError:
    return DivergenceError(f"training diverged in round {round_idx} (algo={algo_name(cfg)}): {what}; {advice(cfg)}.")


def on_nonfinite(cfg: DictConfig) -> str:
    return choice(cfg.get("on_nonfinite", "stop"))


@dataclass
class Screened:
    """The clients kept after screening and their results (rows aligned)."""

    clients: torch.Tensor
    thetas: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    dropped: int


def screen_clients(cfg: DictConfig, round_idx: int, clients: torch.Tensor, result: Any) -> Screened:
    """Stop on (or drop) clients whose loss or model is non-finite."""
    ok = torch.isfinite(result.loss.reshape(-1)).to(result.thetas.device) & torch.isfinite(result.thetas).all(dim=1)
    if bool(ok.all()):
        return Screened(clients, result.thetas, result.loss, result.steps, 0)
    bad = int((~ok).sum())
    if on_nonfinite(cfg) != "drop":
        first = int(clients[~ok.to(clients.device)][0])
        raise diverged(
            cfg, round_idx,
            f"{bad} of {len(clients)} active clients (first: client {first}) got a non-finite loss or model "
            "(on_nonfinite=drop would leave such clients out)",
        )
    keep = ok.to(clients.device)
    return Screened(clients[keep], result.thetas[ok], result.loss.reshape(-1)[ok.to(result.loss.device)], result.steps[ok.to(result.steps.device)], bad)


def check_server(cfg: DictConfig, round_idx: int, theta: torch.Tensor) -> None:
    if not bool(torch.isfinite(theta).all()):
        raise diverged(cfg, round_idx, "the new server model is non-finite")


class LossGuard:
    """Remembers round 1's train loss and stops when a later one exceeds it ``factor`` times."""

    def __init__(self, cfg: DictConfig, reference: Optional[float] = None):
        self.cfg = cfg
        self.factor = float(cfg.get("divergence_factor", 0.0) or 0.0)
        self.reference = reference

    def check_train(self, round_idx: int, loss: float) -> None:
        if math.isnan(loss):  # every client was dropped: nothing to compare
            return
        if not math.isfinite(loss):
            raise diverged(self.cfg, round_idx, f"the mean train loss is {loss}")
        if self.reference is None:
            self.reference = loss
            return
        if self.factor > 0 and loss > self.factor * max(self.reference, 1e-12):
            raise diverged(
                self.cfg, round_idx,
                f"the train loss {loss:.4g} is over divergence_factor={self.factor:g} times round 1's {self.reference:.4g}",
            )

    def check_test(self, round_idx: int, metrics: dict[str, float]) -> None:
        if not math.isfinite(metrics.get("test_loss", 0.0)):
            raise diverged(self.cfg, round_idx, f"the server model's test loss is {metrics['test_loss']}")
