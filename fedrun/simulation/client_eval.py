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

Both splits follow one rule for a client of n samples: floor(f·n) test samples (at least 1 when
f > 0 and n >= 2) and floor(v·n) validation samples, at least one left for training. Two draws
implement it (``ClientEvalSpec.split``): :func:`split_partition`, a loop over clients with one
``randperm`` each (every existing setting, the pins), and :func:`split_vectorized` with
``data.generator=vectorized``, all clients at once (same sizes, other samples chosen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from fedrun.config.specs import ClientEvalSpec  # noqa: F401  (also as client_eval.*)
from fedrun.data.partition import ClientIndex, Partition, partition_sizes, partition_to
from fedrun.errors import FedrunError
from fedrun.simulation.evaluation import evaluate, totals
from fedrun.seeding import generator



@dataclass
class HeldOut:
    """Indices into the training tensors held out per client (its test split) and for validation."""

    tests: Partition  # one index tensor per client (a list, or a ClientIndex from split_vectorized)
    val: torch.Tensor

    def to(self, device: torch.device) -> "HeldOut":
        return HeldOut(partition_to(self.tests, device), self.val.to(device))


def _refuse(k: int, n: int, test_fraction: float, val_fraction: float) -> FedrunError:
    return FedrunError(f"client {k} has {n} samples: client_test_fraction={test_fraction} and val_fraction={val_fraction} "
                       f"leave none for training: lower them or use fewer clients.")


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
            raise _refuse(k, n, test_fraction, val_fraction)
        order = torch.randperm(n, generator=gen).to(idx.device)
        keep = torch.ones(n, dtype=torch.bool, device=idx.device)
        keep[order[: n_test + n_val]] = False
        tests.append(idx[order[:n_test]])
        vals.append(idx[order[n_test : n_test + n_val]])
        train.append(idx[keep])
    val = torch.cat(vals) if vals else torch.empty(0, dtype=torch.long)
    return train, HeldOut(tests, val)


KEY_SCALE = 2**24  # float32 uniforms' resolution: the (client, key) sort as one integer sort


def split_vectorized(partition: Partition, test_fraction: float, val_fraction: float,
                     gen: torch.Generator) -> tuple[ClientIndex, HeldOut]:
    """:func:`split_partition`'s rule for every client at once, with no Python call per client.

    One uniform key per sample (``torch.rand`` from ``gen``, in the partition's order); a stable sort
    by (client, key) gives each sample its rank within its client; ranks below n_test are the test
    split, the next n_val the validation part, the rest training. The sizes are the loop's exactly,
    the samples chosen are others (another draw). Training indices keep their order within each
    client; test and validation indices come in key order. Returns the training partition and the
    test splits as :class:`ClientIndex` (two tensors each), the validation indices in client order.
    """
    if isinstance(partition, ClientIndex):
        order, sizes = partition.order, partition.sizes
    else:
        order = torch.cat(partition) if len(partition) else torch.empty(0, dtype=torch.long)
        sizes = partition_sizes(partition)
    device, order = order.device, order.reshape(-1).cpu()
    n = sizes.cpu().long()
    # The loop's int(f * n): a float64 product truncated (n >= 0, so floor), then at least 1 test sample.
    n_test = (test_fraction * n.double()).floor().long() if test_fraction > 0 else torch.zeros_like(n)
    if test_fraction > 0:
        n_test = torch.where((n_test == 0) & (n >= 2), torch.ones_like(n), n_test)
    n_val = (val_fraction * n.double()).floor().long()
    bad = torch.nonzero(n - n_test - n_val < 1)
    if len(bad):
        k = int(bad[0])
        raise _refuse(k, int(n[k]), test_fraction, val_fraction)
    client = torch.repeat_interleave(torch.arange(len(n)), n)  # the partition's positions are grouped by client
    key = torch.rand(len(order), generator=gen)  # float32: multiples of 2^-24, so key * 2^24 is an exact integer
    # by client, then by key within it: one stable sort of client * 2^24 + key * 2^24 (int64, exact)
    perm = torch.sort(client * KEY_SCALE + (key * KEY_SCALE).long(), stable=True).indices
    starts = torch.cumsum(n, 0) - n
    rank = torch.arange(len(order)) - starts[client]  # the sorted position's rank within its client (blocks unchanged)
    chosen = order[perm]
    in_test = rank < n_test[client]
    in_val = ~in_test & (rank < (n_test + n_val)[client])
    in_train = torch.ones(len(order), dtype=torch.bool)
    in_train[perm] = ~(in_test | in_val)  # back to the partition's order, so training keeps it
    train = ClientIndex(order[in_train].to(device), n - n_test - n_val)
    tests = ClientIndex(chosen[in_test].to(device), n_test)
    return train, HeldOut(tests, chosen[in_val].to(device))


SPLITS = {"loop": split_partition, "vectorized": split_vectorized}


def hold_out(spec: ClientEvalSpec, partition: Partition) -> tuple[Partition, Optional[HeldOut]]:
    """The run's partition with the held-out parts taken out (unchanged when both fractions are 0)."""
    if spec.test_fraction == 0 and spec.val_fraction == 0:
        return partition, None
    split = SPLITS[spec.split]
    return split(partition, spec.test_fraction, spec.val_fraction, generator(spec.seed if spec.split_seed is None else spec.split_seed, "held_out"))


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


def client_sums(spec: ClientEvalSpec, exp: Any, held: HeldOut, round_idx: int, theta: torch.Tensor) -> torch.Tensor:
    """[k, 2] float64 on the device, one row per client with a test split: the server model's summed
    cross-entropy and correct predictions on it (:func:`fedrun.simulation.evaluation.totals`), and with
    ``finetune_steps`` a third column, the fine-tuned model's correct predictions."""
    d, model, steps = exp.data, exp.model, spec.finetune_steps
    out = []
    for k, idx in enumerate(held.tests):
        if len(idx) == 0:
            continue
        x, y = d.x_train[idx], d.y_train[idx]
        client = totals(model, theta, x, y)
        if steps > 0:
            train = exp.partition[k]
            gen = generator(spec.seed, "finetune", round_idx, k)
            w = finetune(model, theta, d.x_train[train], d.y_train[train], steps, spec.lr, spec.batch_size, gen)
            client = torch.cat([client, totals(model, w, x, y)[1:]])
        out.append(client)
    if not out:
        return torch.zeros((0, 3 if steps > 0 else 2), dtype=torch.float64, device=theta.device)
    return torch.stack(out)


def evaluate_clients(spec: ClientEvalSpec, exp: Any, held: HeldOut, round_idx: int,
                     theta: torch.Tensor) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The server model ``theta`` on every client's held-out split (and fine-tuned, and on the
    validation split): the metrics row's columns, and one ``client_metrics.csv`` row per client.

    Every client's sums are read back to the host in one transfer (:func:`client_sums`): on a GPU one
    synchronisation per evaluated round instead of a few per client."""
    out: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    d, model, steps = exp.data, exp.model, spec.finetune_steps
    if spec.test_fraction > 0:
        accs, ft_accs = [], []
        sums = iter(client_sums(spec, exp, held, round_idx, theta).tolist())
        for k, idx in enumerate(held.tests):
            if len(idx) == 0:
                accs.append(math.nan)
                ft_accs.append(math.nan)
                continue
            n, client = len(idx), next(sums)
            loss, acc = client[0] / n, client[1] / n
            row = {"round": round_idx, "client": k, "n_test": n, "loss": loss, "acc": acc}
            accs.append(acc)
            if steps > 0:
                row["acc_finetuned"] = client[2] / n
                ft_accs.append(row["acc_finetuned"])
            rows.append(row)
        out.update(distribution(torch.tensor(accs, dtype=torch.float64), "client_acc"))
        if steps > 0:
            out.update(distribution(torch.tensor(ft_accs, dtype=torch.float64), "client_acc_ft"))
    if len(held.val):
        out["val_loss"], out["val_acc"] = evaluate(model, theta, d.x_train[held.val], d.y_train[held.val])
    return out, rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``final_val_acc`` for summary.json when the run has a validation split."""
    vals = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    return {"final_val_acc": vals[-1]} if vals else {}
