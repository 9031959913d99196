"""Many devices (issue 22): the vectorised synthetic generator, its own test set, compressed partitions,
the O(active) sampler, the threads rule during set-up."""

from __future__ import annotations

import math

import pytest
import torch

from fedrun.data.synthetic import make_synthetic
from fedrun.errors import FedrunError
from fedrun.data.partition import ClientIndex, check_partition, natural, partition_sizes
from fedrun.simulation.sampling import fixed_sparse
from conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_vectorized_generator_keeps_sizes_and_device_means() -> None:
    """Same seed: the same device sizes (drawn before the samples, unlike them shared) and the same
    feature means v_k. Each device's sample mean of feature j is within 5 standard errors of the
    other generator's: std_j = j^-0.6 over n_k samples, two independent samples -> sqrt(2/n_k)."""
    kw = dict(num_clients=40, seed=3, sigma=0.5, mean_samples=60)
    old, new = make_synthetic(**kw), make_synthetic(**kw, generator="vectorized")
    assert torch.equal(torch.bincount(old.groups), torch.bincount(new.groups))
    std = torch.arange(1, 31, dtype=torch.float64).pow(-0.6)
    for k in range(40):
        a, b = old.x_train[old.groups == k].double(), new.x_train[new.groups == k].double()
        se = std * math.sqrt(2 / len(a))
        assert bool(((a.mean(0) - b.mean(0)).abs() <= 5 * se).all()), k
        # within-device spread: diag(Sigma) = j^-1.2 (variance estimate within 50% at n >= 20 for the first features)
        if len(b) >= 20:
            ratio = b.var(0)[:3] / std[:3] ** 2
            assert bool(((ratio > 0.4) & (ratio < 2.0)).all())


def test_vectorized_generator_class_balance_matches() -> None:
    """Pooled class shares over 400 devices agree within 0.05 (each device's labels depend on its
    random solution; 400 devices make the pooled share's spread about 0.02)."""
    kw = dict(num_clients=400, seed=1, mean_samples=30)
    old, new = make_synthetic(**kw), make_synthetic(**kw, generator="vectorized")
    share = lambda y: torch.bincount(y, minlength=5).double() / len(y)  # noqa: E731
    assert (share(old.y_train) - share(new.y_train)).abs().max() < 0.05


def test_vectorized_generator_draws_in_chunks_not_per_device(monkeypatch) -> None:
    """The number of random draws does not grow with the number of devices (below one chunk)."""
    import fedrun.data.synthetic as syn

    calls = []
    real = torch.randn
    monkeypatch.setattr(syn.torch, "randn", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    counts = []
    for m in (50, 2000):
        calls.clear()
        make_synthetic(m, 0, mean_samples=5, generator="vectorized")
        counts.append(len(calls))
    monkeypatch.undo()
    assert counts[0] == counts[1]


def test_vectorized_held_out_split_sizes_as_the_loop() -> None:
    """test_fraction: each device holds out max(1, min(n-1, round(f n))) samples, as the loop
    generator does (same sizes, so the same split sizes in total)."""
    kw = dict(num_clients=30, seed=2, sigma=0.7, mean_samples=15, test_fraction=0.25)
    old, new = make_synthetic(**kw), make_synthetic(**kw, generator="vectorized")
    assert len(new.y_test) == len(old.y_test) and len(new.y_train) == len(old.y_train)
    assert torch.equal(torch.bincount(new.groups), torch.bincount(old.groups))


@pytest.mark.parametrize("gen", ["loop", "vectorized"])
def test_test_samples_own_test_set(gen: str) -> None:
    """test_samples=T: T test samples from a second stream; the training data is what it is without
    them; test features and labels are distributed as the training data's (means within 0.15, class
    shares within 0.1 at T=3000)."""
    kw = dict(num_clients=60, seed=4, mean_samples=50, generator=gen)
    plain, own = make_synthetic(**kw), make_synthetic(**kw, test_samples=3000)
    assert torch.equal(plain.x_train, own.x_train) and torch.equal(plain.y_train, own.y_train)
    assert len(own.y_test) == 3000 and own.x_test is not own.x_train
    assert (own.x_test.mean(0) - own.x_train.mean(0)).abs().max() < 0.15
    share = lambda y: torch.bincount(y, minlength=5).double() / len(y)  # noqa: E731
    assert (share(own.y_test) - share(own.y_train)).abs().max() < 0.1


def test_loop_generator_unchanged_by_the_new_options() -> None:
    """generator=loop (default) without test_samples is the stream of before: it equals itself with
    the new keys at their defaults, and its test set is its training set."""
    a = make_synthetic(20, 0)
    b = make_synthetic(20, 0, test_samples=0, generator="loop")
    assert torch.equal(a.x_train, b.x_train) and a.x_test is a.x_train


def test_bad_generator_options() -> None:
    with pytest.raises(FedrunError, match="data.generator"):
        make_synthetic(5, 0, generator="nope")
    with pytest.raises(FedrunError, match="test_samples"):
        make_synthetic(5, 0, test_samples=10, test_fraction=0.2)


def test_natural_partition_is_compressed_and_equals_the_list() -> None:
    """natural returns a ClientIndex whose clients are the list of before; unsorted groups too."""
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    parts = natural(torch.zeros(6, dtype=torch.long), 3, torch.Generator(), groups=groups)
    assert isinstance(parts, ClientIndex)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    assert parts[-1].tolist() == [0, 2, 5] and partition_sizes(parts).tolist() == [2, 1, 3]
    with pytest.raises(IndexError):
        parts[3]


def test_check_partition_catches_faults_in_a_compressed_partition() -> None:
    check_partition(ClientIndex(torch.tensor([2, 0, 1]), torch.tensor([1, 2])), 3, 2, "x")
    with pytest.raises(FedrunError, match="exactly one client"):
        check_partition(ClientIndex(torch.tensor([2, 2, 1]), torch.tensor([1, 2])), 3, 2, "x")
    with pytest.raises(FedrunError, match="without samples"):
        check_partition(ClientIndex(torch.tensor([2, 0, 1]), torch.tensor([0, 3])), 3, 2, "x")
    with pytest.raises(FedrunError, match="add up"):
        check_partition(ClientIndex(torch.tensor([2, 0, 1]), torch.tensor([1, 1])), 3, 2, "x")


def test_fixed_sparse_is_a_uniform_subset() -> None:
    """Exactly round(p m) distinct sorted ids, a function of (seed, round); over 4000 rounds of 3 of
    20 clients each client's frequency is 0.15 within 5 standard errors (sqrt(0.15·0.85/4000))."""
    a = fixed_sparse(1_000_000, 1e-5, 0, 7)
    assert len(a) == 10 and len(torch.unique(a)) == 10 and torch.equal(a, torch.sort(a).values)
    assert torch.equal(a, fixed_sparse(1_000_000, 1e-5, 0, 7)) and not torch.equal(a, fixed_sparse(1_000_000, 1e-5, 0, 8))
    assert fixed_sparse(10, 1.0, 0, 1).tolist() == list(range(10))
    counts = torch.zeros(20)
    for r in range(4000):
        counts[fixed_sparse(20, 0.15, 0, r)] += 1
    assert ((counts / 4000 - 0.15).abs() <= 5 * math.sqrt(0.15 * 0.85 / 4000)).all()


def test_context_weights_computed_once() -> None:
    from fedrun.algorithms.base import FedContext

    ctx = FedContext(3, 1, torch.tensor([1, 2, 3]), 10, 1, torch.device("cpu"))
    assert ctx.weights is ctx.weights
    torch.testing.assert_close(ctx.weights, torch.tensor([0.5, 1.0, 1.5]))


def test_threads_rule_holds_during_set_up(tmp_path, monkeypatch) -> None:
    """threads=null on a CPU: set-up (build) runs on one thread, and the count comes back after."""
    import fedrun.runner as runner

    seen = []
    real = runner.build
    monkeypatch.setattr(runner, "build", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    torch.set_num_threads(2)
    try:
        runner.run(compose_config("rounds=1", "num_clients=5", "device=cpu", "progress=false", "threads=null"), tmp_path / "r")
        assert seen == [1] and torch.get_num_threads() == 2
        seen.clear()
        runner.run(compose_config("rounds=1", "num_clients=5", "device=cpu", "progress=false", "threads=2"), tmp_path / "r2")
        assert seen == [2]
    finally:
        torch.set_num_threads(1)


def test_a_large_run_builds_with_the_vectorized_options(tmp_path) -> None:
    """20,000 devices of 5 samples, 10 active: builds and runs two rounds with a test set of 500."""
    from fedrun.runner import run

    cfg = compose_config("num_clients=20000", "participation=0.0005", "sampling=fixed_sparse", "data.mean_samples=5",
                         "data.generator=vectorized", "data.test_samples=500", "rounds=2", "progress=false", "local_epochs=1")
    summary = run(cfg, tmp_path / "big")
    assert summary["status"] == "finished"


def test_eval_all_every_k_rounds(tmp_path) -> None:
    """eval_all_every=3 over 4 rounds: the mean of all models in rounds 3 and 4 (the last) only, with the
    numbers of eval_all_every=1 there; rounds 1 and 2 leave it empty (nan); nothing else changes."""
    import csv

    from fedrun.runner import run

    base = ["rounds=4", "num_clients=6", "progress=false", "device=cpu", "checkpoint_every=0"]
    run(compose_config(*base), tmp_path / "every")
    run(compose_config(*base, "eval_all_every=3"), tmp_path / "third")
    rows = lambda d: list(csv.DictReader((tmp_path / d / "metrics.csv").open()))  # noqa: E731
    every, third = rows("every"), rows("third")
    assert [math.isnan(float(r["test_acc_all"])) for r in third] == [True, True, False, False]
    for a, b in zip(every, third):
        assert a["test_acc"] == b["test_acc"] and a["train_loss"] == b["train_loss"]
    assert [r["test_acc_all"] for r in every[2:]] == [r["test_acc_all"] for r in third[2:]]
    with pytest.raises(FedrunError, match="eval_all_every"):
        run(compose_config(*base, "eval_all_every=0"), tmp_path / "bad")
