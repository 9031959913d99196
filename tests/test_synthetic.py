"""The synthetic dataset: determinism, switches and shapes."""

from __future__ import annotations

import torch

from fedrun.data.synthetic import make_synthetic


def test_same_seed_same_data_and_shapes():
    a = make_synthetic(num_clients=7, seed=1, dim=12, num_classes=4, mean_samples=30)
    b = make_synthetic(num_clients=7, seed=1, dim=12, num_classes=4, mean_samples=30)
    c = make_synthetic(num_clients=7, seed=2, dim=12, num_classes=4, mean_samples=30)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (7 * 30, 12) and a.x_train.dtype == torch.float32
    assert int(a.y_train.max()) < 4
    assert torch.equal(torch.bincount(a.groups), torch.full((7,), 30))
    assert a.x_test is a.x_train  # reference: test on the training data


def test_sigma_spreads_sizes():
    d = make_synthetic(num_clients=200, seed=0, sigma=1.0, mean_samples=100)
    sizes = torch.bincount(d.groups).double()
    assert 0.8 < sizes.log().std().item() < 1.2
    assert d.groups.max() == 199


def test_iid_data_has_zero_feature_means_and_iid_solution_shares_the_labeller():
    d = make_synthetic(num_clients=5, seed=0, iid_data=True, iid_solution=True, mean_samples=4000, dim=5)
    means = torch.stack([d.x_train[d.groups == k].mean(0) for k in range(5)])
    assert means.abs().max() < 0.1  # x ~ N(0, diag(j^-1.2)): std of a 4000-sample mean <= 0.016
    # one shared (W, b): a single linear classifier separates all devices' labels perfectly
    het = make_synthetic(num_clients=5, seed=0, mean_samples=4000, dim=5)
    means_het = torch.stack([het.x_train[het.groups == k].mean(0) for k in range(5)])
    assert means_het.abs().max() > 0.3


def test_held_out_split_per_device():
    d = make_synthetic(num_clients=4, seed=0, mean_samples=50, test_fraction=0.2)
    assert len(d.y_train) == 160 and len(d.y_test) == 40
    assert torch.equal(torch.bincount(d.groups), torch.full((4,), 40))


def test_sizes_past_the_machine_are_refused_exactly_at_its_memory(monkeypatch):
    """The refusal of exploding lognormal sizes sits exactly where the drawn samples' float64 features
    and label (8 (d + 1) bytes each) pass the machine's memory: a draw of N samples at d=30 needs
    248 N bytes, so a machine of 248 N bytes runs it and one of 248 N - 1 refuses it, naming
    data.sigma; no memory patch is needed for sigma=50, whose sizes pass int64 (they used to wrap
    into a negative allocation that Hydra blamed on the command line)."""
    import pytest

    import fedrun.config.sizes as sizes
    from fedrun.errors import FedrunError

    kw = dict(num_clients=6, seed=3, sigma=1.5, mean_samples=20)
    n = len(make_synthetic(**kw).y_train)
    monkeypatch.setattr(sizes, "host_total_bytes", lambda: 248 * n)
    assert len(make_synthetic(**kw).y_train) == n
    monkeypatch.setattr(sizes, "host_total_bytes", lambda: 248 * n - 1)
    with pytest.raises(FedrunError, match=rf"^data=synthetic with data.sigma=1.5 and data.mean_samples=20 draws {n:.3g} samples"):
        make_synthetic(**kw)
    monkeypatch.undo()
    with pytest.raises(FedrunError, match=r"lower data.sigma or data.mean_samples\.$"):
        make_synthetic(num_clients=3, seed=0, sigma=50.0)
