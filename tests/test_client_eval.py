"""Per-client evaluation on a hand-made partition whose per-client accuracies are known, the held-out
split, fine-tuning, and the validation split in a real run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

import fedrun
from fedrun.observers.client_eval import ClientEvaluator
from fedrun.simulation.client_eval import ClientEvalSpec, HeldOut, distribution, split_partition, split_vectorized
from fedrun.data.partition import ClientIndex
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


# ---- the vectorised held-out split (data.generator=vectorized) ----

def _scattered(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """A partition of sum(sizes) samples whose indices are shuffled (not each client's own arange)."""
    every = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))
    return list(torch.split(every, sizes))


def _check_split(partition, train, held, test_fraction, val_fraction) -> list[tuple[int, int, int]]:
    """Every client's test, validation and training parts are disjoint, inside it, and cover it;
    returns each client's (n_test, n_val, n_train)."""
    val = set(held.val.tolist())
    assert len(val) == len(held.val)
    sizes = []
    for k, idx in enumerate(partition):
        own, test, tr = set(idx.tolist()), held.tests[k].tolist(), train[k].tolist()
        v = own & val
        assert len(set(test)) == len(test) and len(set(tr)) == len(tr)
        assert not (set(test) & set(tr)) and not (set(test) & v) and not (set(tr) & v)
        assert set(test) | set(tr) | v == own
        sizes.append((len(test), len(v), len(tr)))
    assert len(train) == len(held.tests) == len(partition)
    return sizes


def test_vectorized_split_sizes_by_hand():
    """Sizes 10, 3, 21, 1, 2 with f = 0.2, v = 0.1: n_test = floor(0.2 n) (at least 1 when n >= 2),
    n_val = floor(0.1 n): 10 -> (2, 1, 7); 3 -> floor(0.6) = 0 -> 1, 0, 2; 21 -> (floor(4.2) = 4,
    floor(2.1) = 2, 15); 1 -> (0, 0, 1) (one sample is not split); 2 -> (1, 0, 1). The loop gives the same."""
    partition = _scattered([10, 3, 21, 1, 2])
    expected = [(2, 1, 7), (1, 0, 2), (4, 2, 15), (0, 0, 1), (1, 0, 1)]
    for split in (split_partition, split_vectorized):
        train, held = split(partition, 0.2, 0.1, torch.Generator().manual_seed(0))
        assert _check_split(partition, train, held, 0.2, 0.1) == expected
    train, held = split_vectorized(partition, 0.2, 0.1, torch.Generator().manual_seed(0))
    assert isinstance(train, ClientIndex) and isinstance(held.tests, ClientIndex)
    for k, idx in enumerate(partition):  # training indices keep the partition's order within each client
        pos = {int(i): j for j, i in enumerate(idx)}
        assert [pos[int(i)] for i in train[k]] == sorted(pos[int(i)] for i in train[k])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=25), f=st.floats(0.0, 0.6), v=st.floats(0.0, 0.39),
       compressed=st.booleans(), seed=st.integers(0, 2**31))
def test_vectorized_split_has_the_loops_sizes(sizes, f, v, compressed, seed):
    """For random client sizes and fractions the vectorised split gives every client the loop's sizes
    (or refuses with the loop's sentence), with disjoint parts covering the client, from a list
    partition or a ClientIndex alike."""
    partition = _scattered(sizes, seed % 1000)
    given_partition = ClientIndex(torch.cat(partition), torch.tensor(sizes)) if compressed else partition
    try:
        train, held = split_partition(partition, f, v, torch.Generator().manual_seed(seed))
    except FedrunError as loop_error:
        with pytest.raises(FedrunError) as vec_error:
            split_vectorized(given_partition, f, v, torch.Generator().manual_seed(seed))
        assert str(vec_error.value) == str(loop_error)
        return
    vtrain, vheld = split_vectorized(given_partition, f, v, torch.Generator().manual_seed(seed))
    assert _check_split(partition, vtrain, vheld, f, v) == _check_split(partition, train, held, f, v)


def test_vectorized_split_is_seeded_and_draws_other_samples_than_the_loop():
    """Same seed, same split; another seed, or the loop, chooses other samples (same sizes); the
    validation indices come in client order, as the loop's."""
    partition = _scattered([50] * 20)
    a = split_vectorized(partition, 0.2, 0.1, torch.Generator().manual_seed(3))
    b = split_vectorized(partition, 0.2, 0.1, torch.Generator().manual_seed(3))
    c = split_vectorized(partition, 0.2, 0.1, torch.Generator().manual_seed(4))
    loop = split_partition(partition, 0.2, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a[0].order, b[0].order) and torch.equal(a[1].tests.order, b[1].tests.order) and torch.equal(a[1].val, b[1].val)
    assert not torch.equal(a[1].tests.order, c[1].tests.order)
    assert _check_split(partition, a[0], a[1], 0.2, 0.1) == _check_split(partition, *loop, 0.2, 0.1) == [(10, 5, 35)] * 20
    assert set(a[1].tests.order.tolist()) != set(torch.cat(loop[1].tests).tolist())
    owner = torch.empty(1000, dtype=torch.long)
    for k, idx in enumerate(partition):
        owner[idx] = k
    assert bool((owner[a[1].val].diff() >= 0).all())


def test_vectorized_split_refuses_with_the_loops_sentence():
    """Sizes 5, 2, 2 with f = 0.1, v = 0.5: client 0 keeps 5 - 1 - 2 = 2; client 1 (the first
    refused) 2 - 1 - 1 = 0; client 2 the same: the sentence names client 1."""
    partition = _scattered([5, 2, 2])
    with pytest.raises(FedrunError) as loop_error:
        split_partition(partition, 0.1, 0.5, torch.Generator().manual_seed(0))
    with pytest.raises(FedrunError, match="^client 1 has 2 samples: .* leave none for training") as vec_error:
        split_vectorized(partition, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert str(vec_error.value) == str(loop_error.value)


class _NoClientLookups(ClientIndex):
    def __getitem__(self, k):
        raise AssertionError("the vectorised split looked up one client")


def test_vectorized_split_makes_no_call_per_client(monkeypatch):
    """200,000 clients of 20 samples (f = v = 0.1: 2 test, 2 validation, 16 training each) with no
    client looked up and no randperm: no Python step per client (the test takes about a second)."""
    m = 200_000
    order = torch.randperm(20 * m, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("randperm")))
    train, held = split_vectorized(_NoClientLookups(order, torch.full((m,), 20)), 0.1, 0.1, torch.Generator().manual_seed(0))
    assert (held.tests.sizes == 2).all() and (train.sizes == 16).all() and len(held.val) == 2 * m
    every = torch.cat([train.order, held.tests.order, held.val])
    assert torch.equal(torch.sort(every).values, torch.arange(20 * m))
    owner = torch.empty(20 * m, dtype=torch.long)
    owner[order] = torch.arange(m).repeat_interleave(20)
    assert torch.equal(owner[held.tests.order], torch.arange(m).repeat_interleave(2))  # each client's own samples
    assert torch.equal(owner[train.order], torch.arange(m).repeat_interleave(16))
    assert torch.equal(owner[held.val], torch.arange(m).repeat_interleave(2))


def test_the_spec_chooses_the_split_from_data_generator(tmp_path: Path):
    """data.generator=vectorized draws the held-out splits vectorised (a ClientIndex reaches the
    per-client evaluation); every other setting keeps the loop."""
    from conftest import compose_config
    from fedrun.config.specs import read_client_eval

    assert read_client_eval(compose_config("client_test_fraction=0.2")).split == "loop"
    assert read_client_eval(compose_config("data=mnist", "client_test_fraction=0.2")).split == "loop"  # no data.generator
    assert read_client_eval(compose_config("data.generator=vectorized", "client_test_fraction=0.2")).split == "vectorized"
    df = fedrun.run(["num_clients=5", "rounds=1", "local_epochs=1", "client_test_fraction=0.25", "val_fraction=0.1",
                     "finetune_steps=1", "data.generator=vectorized", "progress=false"], run_dir=tmp_path / "r")
    table = pd.read_csv(tmp_path / "r" / "client_metrics.csv")
    assert df["client_acc_mean"].notna().all() and df["val_acc"].notna().all()
    assert len(table) == 5 and (table["n_test"] == 50).all()  # 200 samples per device, 25% each
