"""Per-client evaluation as an observer: each evaluated round's row gets the clients' metrics
(:func:`fedrun.simulation.client_eval.evaluate_clients`) and ``client_metrics.csv`` one row per client."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from fedrun.config.specs import ClientEvalSpec
from fedrun.observers.base import Observer
from fedrun.simulation.client_eval import HeldOut, evaluate_clients

TABLE = "client_metrics.csv"


class ClientEvaluator(Observer):
    """Evaluates the server model on every client's held-out split and writes ``client_metrics.csv``.
    The held-out indices (made on the CPU) are moved to the data's device once, not at every evaluation."""

    def __init__(self, spec: ClientEvalSpec, exp: Any, held: HeldOut, run_dir: Path, resumed_round: int = 0):
        device = exp.data.x_train.device
        held = held.to(device)
        self.spec, self.exp, self.held = spec, exp, held
        self.path = Path(run_dir) / TABLE
        self.steps = spec.finetune_steps
        if self.path.exists():  # a resumed run: keep the rows up to its checkpoint's round
            keep = [r for r in _read(self.path) if int(r["round"]) <= resumed_round] if resumed_round else []
            self._write(keep, mode="w")

    def metrics(self, round_idx: int, exp: Any) -> dict[str, float]:
        return self.evaluate(round_idx, exp.theta)

    def evaluate(self, round_idx: int, theta: torch.Tensor) -> dict[str, float]:
        out, rows = evaluate_clients(self.spec, self.exp, self.held, round_idx, theta)
        if self.spec.test_fraction > 0:
            self._write(rows)
        return out

    def _write(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        fields = ["round", "client", "n_test", "loss", "acc"] + (["acc_finetuned"] if self.steps > 0 else [])
        new = mode == "w" or not self.path.exists()
        with self.path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
