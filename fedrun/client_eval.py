"""Per-client evaluation and a validation split, both held out of each client's own partition.

``client_test_fraction=f`` keeps a fraction f of every client's partition (at random, seeded) out of
its training data as that client's own test split. At each evaluated round the server model is
evaluated on every client's split:

- ``client_acc_mean`` / ``client_acc_std`` (sample std, ddof=1) / ``client_acc_worst10`` (the mean
  accuracy of the worst 10% of clients, at least one) go into ``metrics.csv``, accuracies as
  fractions like ``test_acc``; clients whose split is empty (too few samples) are left out;
- ``client_metrics.csv`` in the run dir gets one row per client and evaluated round: ``round``,
  ``client``, ``n_test``, ``loss``, ``acc`` (and ``acc_finetuned``);
- ``finetune_steps=k`` also measures personalised accuracy: each client takes k plain SGD steps
  (``lr``, minibatches of ``batch_size`` from its training data, no augmentation, weight decay or
  clipping) from the server model, and the result is evaluated on its split
  (``client_acc_ft_mean``/``_std``/``_worst10``, column ``acc_finetuned``). The server model is not changed.

``val_fraction=v`` holds out a fraction v of every client's partition as validation data; the
server model's ``val_loss``/``val_acc`` go into ``metrics.csv`` and ``final_val_acc`` into
``summary.json``, which a hyper-parameter search maximises instead of the test accuracy.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from fedrun.errors import FedrunError
from fedrun.evaluation import evaluate
from fedrun.seeding import generator

TABLE = "client_metrics.csv"


@dataclass
class HeldOut:
    """Indices into the training tensors held out per client (its test split) and for validation."""

    tests: list[torch.Tensor]
    val: torch.Tensor


@dataclass(frozen=True)
class ClientEvalSpec:
    """Per-client evaluation settings (read from the config by :func:`fedrun.specs.read`)."""

    test_fraction: float = 0.0  # client_test_fraction: each client's own held-out test split
    val_fraction: float = 0.0  # val_fraction: the validation split (from every client's data)
    finetune_steps: int = 0  # personalised accuracy after this many local SGD steps (0 = off)
    lr: float = 0.1  # the fine-tuning steps' learning rate (the run's lr)
    batch_size: int = 10  # and batch size (the run's)
    seed: int = 0

    def __post_init__(self) -> None:
        test, val = self.test_fraction, self.val_fraction
        if not (0.0 <= test < 1.0 and 0.0 <= val < 1.0 and test + val < 1.0):
            raise FedrunError(f"client_test_fraction={test} and val_fraction={val} are out of range: use fractions >= 0 "
                              f"whose sum is below 1 (e.g. client_test_fraction=0.2 val_fraction=0.1).")
        if self.finetune_steps > 0 and test == 0.0:  # a key that would do nothing here: refused (issue 23)
            raise FedrunError(f"finetune_steps={self.finetune_steps} does nothing without client_test_fraction (the fine-tuned "
                              "models are measured on each client's own test split): add client_test_fraction=0.2, or drop finetune_steps.")


def split_partition(partition: list[torch.Tensor], test_fraction: float, val_fraction: float,
                    gen: torch.Generator) -> tuple[list[torch.Tensor], HeldOut]:
    """Each client's indices -> (its training indices, in their order; its test split; its validation part).

    A client with n samples holds out floor(f·n) for test (at least 1 when f > 0 and n >= 2) and
    floor(v·n) for validation; at least one sample stays for training.
    """
    train, tests, vals = [], [], []
    for k, idx in enumerate(partition):
        n = len(idx)
        n_test = int(test_fraction * n) if test_fraction > 0 else 0
        if test_fraction > 0 and n_test == 0 and n >= 2:
            n_test = 1
        n_val = int(val_fraction * n)
        if n - n_test - n_val < 1:
            raise FedrunError(f"client {k} has {n} samples: client_test_fraction={test_fraction} and val_fraction={val_fraction} "
                              f"leave none for training: lower them or use fewer clients.")
        order = torch.randperm(n, generator=gen).to(idx.device)
        keep = torch.ones(n, dtype=torch.bool, device=idx.device)
        keep[order[: n_test + n_val]] = False
        tests.append(idx[order[:n_test]])
        vals.append(idx[order[n_test : n_test + n_val]])
        train.append(idx[keep])
    val = torch.cat(vals) if vals else torch.empty(0, dtype=torch.long)
    return train, HeldOut(tests, val)


def hold_out(spec: ClientEvalSpec, partition: list[torch.Tensor]) -> tuple[list[torch.Tensor], Optional[HeldOut]]:
    """The run's partition with the held-out parts taken out (unchanged when both fractions are 0)."""
    if spec.test_fraction == 0 and spec.val_fraction == 0:
        return partition, None
    return split_partition(partition, spec.test_fraction, spec.val_fraction, generator(spec.seed, "held_out"))


def columns(spec: ClientEvalSpec) -> list[str]:
    test, val = spec.test_fraction, spec.val_fraction
    cols = []
    if test > 0:
        cols += ["client_acc_mean", "client_acc_std", "client_acc_worst10"]
        if spec.finetune_steps > 0:
            cols += ["client_acc_ft_mean", "client_acc_ft_std", "client_acc_ft_worst10"]
    if val > 0:
        cols += ["val_loss", "val_acc"]
    return cols


def distribution(accs: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean, sample std (ddof=1) and worst-10% mean of per-client accuracies (NaN entries left out)."""
    a = accs[~torch.isnan(accs)].double()
    if len(a) == 0:
        return {f"{prefix}_mean": math.nan, f"{prefix}_std": math.nan, f"{prefix}_worst10": math.nan}
    worst = torch.sort(a).values[: max(1, math.ceil(0.1 * len(a)))]
    return {f"{prefix}_mean": float(a.mean()), f"{prefix}_std": float(a.std(unbiased=True)) if len(a) > 1 else math.nan,
            f"{prefix}_worst10": float(worst.mean())}


def finetune(model: Any, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch_size: int,
             gen: torch.Generator) -> torch.Tensor:
    """``steps`` plain SGD steps from ``theta`` on minibatches of ``(x, y)`` drawn without replacement per pass."""
    w = theta.detach().clone()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) == 0:
            order = torch.randperm(len(y), generator=gen)
        batch, order = order[:batch_size].to(x.device), order[batch_size:]
        w.requires_grad_(True)
        loss = F.cross_entropy(model(w, x[batch]).float(), y[batch])
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - lr * grad).detach()
    return w


class ClientEvaluator:
    """Evaluates the server model on every client's held-out split and writes ``client_metrics.csv``."""

    def __init__(self, spec: ClientEvalSpec, exp: Any, held: HeldOut, run_dir: Path, resumed_round: int = 0):
        self.spec, self.exp, self.held = spec, exp, held
        self.path = Path(run_dir) / TABLE
        self.steps = spec.finetune_steps
        self.on_clients = spec.test_fraction > 0
        if self.path.exists():  # a resumed run: keep the rows up to its checkpoint's round
            keep = [r for r in _read(self.path) if int(r["round"]) <= resumed_round] if resumed_round else []
            self._write(keep, mode="w")

    def evaluate(self, round_idx: int, theta: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        d, model = self.exp.data, self.exp.model
        if self.on_clients:
            rows, accs, ft_accs = [], [], []
            for k, idx in enumerate(self.held.tests):
                if len(idx) == 0:
                    accs.append(math.nan)
                    ft_accs.append(math.nan)
                    continue
                loss, acc = evaluate(model, theta, d.x_train[idx], d.y_train[idx])
                row = {"round": round_idx, "client": k, "n_test": len(idx), "loss": loss, "acc": acc}
                accs.append(acc)
                if self.steps > 0:
                    train = self.exp.partition[k]
                    gen = generator(self.spec.seed, "finetune", round_idx, k)
                    w = finetune(model, theta, d.x_train[train], d.y_train[train], self.steps, self.spec.lr, self.spec.batch_size, gen)
                    row["acc_finetuned"] = evaluate(model, w, d.x_train[idx], d.y_train[idx])[1]
                    ft_accs.append(row["acc_finetuned"])
                rows.append(row)
            out.update(distribution(torch.tensor(accs, dtype=torch.float64), "client_acc"))
            if self.steps > 0:
                out.update(distribution(torch.tensor(ft_accs, dtype=torch.float64), "client_acc_ft"))
            self._write(rows)
        if len(self.held.val):
            out["val_loss"], out["val_acc"] = evaluate(model, theta, d.x_train[self.held.val], d.y_train[self.held.val])
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


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``final_val_acc`` for summary.json when the run has a validation split."""
    vals = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    return {"final_val_acc": vals[-1]} if vals else {}
