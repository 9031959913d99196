"""Per-client evaluation on a hand-made partition whose per-client accuracies are known, the held-out
split, fine-tuning, and the validation split in a real run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import fedrun
from fedrun.observers.client_eval import ClientEvaluator
from fedrun.simulation.client_eval import ClientEvalSpec, HeldOut, distribution, split_partition
from fedrun.errors import FedrunError
from fedrun.models.params import FlatModel


def _setup(steps: int = 0):
    """A linear 2-class model whose parameters are all 0 except bias[0] = 1: it predicts class 0 for
    every input. Client 0's test split has labels (0, 0) -> accuracy 1; client 1 (0, 1) -> 0.5;
    client 2 (1, 1) -> 0; client 3's split is empty (left out of the distribution).
    Mean 0.5; sample std sqrt(((1-.5)^2 + 0 + (0-.5)^2) / 2) = 0.5; worst 10% of 3 clients = the
    worst ceil(0.3) = 1 client = 0."""
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 2)
    model = FlatModel(module)
    theta = torch.zeros(model.num_params)
    theta[4] = 1.0  # weight (2x2) first, then bias: bias[0] = 1
    x = torch.randn(12, 2)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    data = SimpleNamespace(x_train=x, y_train=y)
    partition = [torch.tensor([6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11]), torch.tensor([3])]  # training parts
    held = HeldOut([torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]), torch.tensor([], dtype=torch.long)],
                   torch.tensor([0, 3]))
    cfg = ClientEvalSpec(test_fraction=0.5, val_fraction=0.2, finetune_steps=steps, lr=5.0, batch_size=2, seed=0)
    exp = SimpleNamespace(data=data, model=model, partition=partition)
    return cfg, exp, held, theta


def test_known_per_client_accuracies_give_the_distribution_and_the_table(tmp_path: Path):
    cfg, exp, held, theta = _setup()
    out = ClientEvaluator(cfg, exp, held, tmp_path).evaluate(4, theta)
    assert out["client_acc_mean"] == pytest.approx(0.5)
    assert out["client_acc_std"] == pytest.approx(0.5)
    assert out["client_acc_worst10"] == 0.0
    assert out["val_acc"] == pytest.approx(0.5)  # validation samples 0 (label 0) and 3 (label 1)
    table = pd.read_csv(tmp_path / "client_metrics.csv")
    assert table["client"].tolist() == [0, 1, 2] and (table["round"] == 4).all()
    assert table["acc"].tolist() == [1.0, 0.5, 0.0] and table["n_test"].tolist() == [2, 2, 2]


def test_finetuning_personalises_without_touching_the_server_model(tmp_path: Path):
    """Client 2 trains on two label-1 samples: 20 SGD steps at lr 5 on the cross-entropy move the
    bias towards class 1 until it predicts 1 on its label-1 test split (accuracy 0 -> 1). Client 0's
    data are all label 0, already predicted: it stays at 1."""
    cfg, exp, held, theta = _setup(steps=20)
    before = theta.clone()
    out = ClientEvaluator(cfg, exp, held, tmp_path).evaluate(1, theta)
    table = pd.read_csv(tmp_path / "client_metrics.csv").set_index("client")
    assert table.loc[2, "acc"] == 0.0 and table.loc[2, "acc_finetuned"] == 1.0
    assert table.loc[0, "acc_finetuned"] == 1.0
    assert out["client_acc_ft_mean"] >= out["client_acc_mean"]
    assert torch.equal(theta, before)


def test_split_partition_holds_out_each_clients_own_samples():
    partition = [torch.arange(0, 10), torch.arange(10, 13), torch.arange(13, 14 + 20)]
    gen = torch.Generator().manual_seed(0)
    train, held = split_partition(partition, 0.2, 0.1, gen)
    for k, idx in enumerate(partition):
        parts = [train[k], held.tests[k]]
        assert set(torch.cat(parts).tolist()) | set(held.val.tolist()) >= set(idx.tolist())
        assert len(held.tests[k]) == max(1, int(0.2 * len(idx)))  # floor, at least one
        assert set(held.tests[k].tolist()) <= set(idx.tolist()) and not set(held.tests[k].tolist()) & set(train[k].tolist())
    assert sum(map(len, train)) + sum(map(len, held.tests)) + len(held.val) == 34  # every sample once
    with pytest.raises(FedrunError, match="leave none for training"):
        split_partition([torch.arange(2)], 0.1, 0.5, gen)  # 1 test (at least one) + 1 validation of 2


def test_distribution_worst_ten_percent():
    accs = torch.tensor([0.1 * i for i in range(20)] + [math.nan], dtype=torch.float64)  # 20 clients + one empty
    out = distribution(accs, "a")
    assert out["a_worst10"] == pytest.approx((0.0 + 0.1) / 2)  # the worst 2 of 20
    assert out["a_mean"] == pytest.approx(0.95)


def test_a_run_with_held_out_splits_writes_the_columns_the_table_and_final_val_acc(tmp_path: Path):
    df = fedrun.run(["num_clients=5", "rounds=2", "local_epochs=1", "client_test_fraction=0.25", "val_fraction=0.1",
                     "finetune_steps=2", "progress=false"], run_dir=tmp_path / "r")
    for col in ["client_acc_mean", "client_acc_std", "client_acc_worst10", "client_acc_ft_mean", "val_acc"]:
        assert df[col].notna().all()
    table = pd.read_csv(tmp_path / "r" / "client_metrics.csv")
    assert len(table) == 2 * 5 and (table["n_test"] == 50).all()  # synthetic: 200 samples per device, 25% each
    by_round = table.groupby("round")["acc"]
    assert by_round.mean().tolist() == pytest.approx(df["client_acc_mean"].tolist())
    assert df.attrs["summary"]["final_val_acc"] == df["val_acc"].iloc[-1]
