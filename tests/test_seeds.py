"""``data_seed`` and ``partition_seed``: fixed, ``seed`` varies training only; unset, ``seed`` drives all."""

from __future__ import annotations

import pytest
import torch

from fedrun.errors import FedrunError
from conftest import build, compose_config
from fedrun.config.specs import resolved
from fedrun.rundir.resume import config_diff
from fedrun.simulation import sampling

TINY = ["num_clients=6", "data.mean_samples=20", "partition=dirichlet", "partition.alpha=0.5", "client_test_fraction=0.2"]


def _built(*overrides: str):
    return build(compose_config(*TINY, *overrides))


def _same_data(a, b) -> bool:
    return torch.equal(a.data.x_train, b.data.x_train) and torch.equal(a.data.y_train, b.data.y_train)


def _same_partition(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.partition + a.held_out.tests, b.partition + b.held_out.tests))


def test_fixed_data_and_partition_seeds_leave_only_training_to_seed():
    a = _built("seed=0", "data_seed=5", "partition_seed=7", "model=mlp", "model.hidden=[4]")
    b = _built("seed=1", "data_seed=5", "partition_seed=7", "model=mlp", "model.hidden=[4]")
    assert _same_data(a, b) and _same_partition(a, b)  # the same clients with the same data ...
    assert not torch.equal(a.theta, b.theta)  # ... trained from another initial model ...
    draws = [[sampling.clients(e.spec.sampling, 6, r).tolist() for r in range(1, 6)] for e in (a, b)]
    assert draws[0] != draws[1]  # ... with other clients sampled


def test_unset_seeds_follow_seed_exactly():
    """data_seed=null and partition_seed=null mean seed: the same run as setting both to seed."""
    plain = _built("seed=3")
    explicit = _built("seed=3", "data_seed=3", "partition_seed=3")
    assert _same_data(plain, explicit) and _same_partition(plain, explicit) and torch.equal(plain.theta, explicit.theta)
    other = _built("seed=4")
    assert not _same_data(plain, other)


def test_partition_seed_moves_the_partition_and_held_out_splits_not_the_data():
    a = _built("partition_seed=0")
    b = _built("partition_seed=1")
    assert _same_data(a, b) and not _same_partition(a, b)
    assert a.spec.sampling == b.spec.sampling  # seed=0 for both: the same training randomness


def test_a_negative_data_seed_is_one_sentence():
    with pytest.raises(FedrunError, match=r"data_seed=-1 is negative: use a seed >= 0, or data_seed=null"):
        _built("data_seed=-1")


def test_a_run_dir_from_before_the_keys_resumes_as_unset():
    new = resolved(compose_config())
    old = {k: v for k, v in new.items() if k not in ("data_seed", "partition_seed")}
    assert config_diff(new, old) == []
    assert config_diff(resolved(compose_config("data_seed=0")), old) == ["data_seed"]
