"""Partitioners: coverage, sizes, label skew, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from fedrun.data import partition as P
from fedrun.errors import FedrunError


def labels_of(n: int = 6000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SPLITS = {
    "iid": lambda y, m, g: P.iid(y, m, g),
    "dirichlet": lambda y, m, g: P.dirichlet(y, m, g, alpha=0.3),
    "unbalanced": lambda y, m, g: P.unbalanced(y, m, g, sigma=0.3),
    "unbalanced_dirichlet": lambda y, m, g: P.unbalanced(y, m, g, sigma=0.3, alpha=0.6),
    "shards": lambda y, m, g: P.shards(y, m, g, shards_per_client=2),
}


@pytest.mark.parametrize("name", SPLITS)
def test_every_index_exactly_once(name):
    y = labels_of()
    parts = SPLITS[name](y, 50, gen())
    assert len(parts) == 50
    assert sum(len(p) for p in parts) == len(y)
    everything = torch.cat(parts)
    assert torch.equal(torch.sort(everything).values, torch.arange(len(y)))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("name", SPLITS)
def test_same_seed_same_split_other_seed_other_split(name):
    y = labels_of()
    a, b, c = (SPLITS[name](y, 20, gen(s)) for s in (1, 1, 2))
    assert all(torch.equal(x, z) for x, z in zip(a, b))
    assert any(not torch.equal(x, z) for x, z in zip(a, c))


def test_balanced_sizes_equal():
    parts = P.iid(labels_of(6000), 100, gen())
    assert {len(p) for p in parts} == {60}
    parts = P.iid(labels_of(6005), 100, gen())
    assert {len(p) for p in parts} == {60, 61}


def label_histograms(y: torch.Tensor, parts: list[torch.Tensor], classes: int = 10) -> torch.Tensor:
    return torch.stack([torch.bincount(y[p], minlength=classes).double() / len(p) for p in parts])


def test_dirichlet_sizes_are_exact():
    y = labels_of()
    parts = P.dirichlet(y, 60, gen(), alpha=0.05)
    assert {len(p) for p in parts} == {100}


def test_dirichlet_large_alpha_is_near_global_mix_small_alpha_concentrated():
    y = labels_of(20000)
    global_mix = torch.bincount(y, minlength=10).double() / len(y)
    flat = label_histograms(y, P.dirichlet(y, 20, gen(), alpha=1000.0))
    # each client has 1000 samples: sampling noise alone gives |deviation| ~ sqrt(.1*.9/1000) ≈ 0.01
    assert (flat - global_mix).abs().max() < 0.06
    skewed = label_histograms(y, P.dirichlet(y, 20, gen(), alpha=0.05))
    top_share = skewed.max(dim=1).values
    # Dir(0.05) over 10 classes puts most mass on one class; IID would give ~0.1-0.15
    assert top_share.median() > 0.6
    assert flat.max(dim=1).values.max() < 0.2


def test_lognormal_spread_as_asked():
    n, m = 100_000, 400
    for sigma in (0.3, 1.0):
        sizes = torch.tensor([len(p) for p in P.unbalanced(labels_of(n), m, gen(), sigma=sigma)], dtype=torch.float64)
        assert int(sizes.sum()) == n
        spread = sizes.log().std().item()
        # std of log sizes of 400 lognormal draws: sigma ± a few percent (rescaling shifts, not scales, the logs)
        assert abs(spread - sigma) < 0.15 * sigma, (sigma, spread)
    zero = [len(p) for p in P.unbalanced(labels_of(1000), 10, gen(), sigma=0.0)]
    assert zero == [100] * 10


def test_shards_give_k_classes_per_client():
    y = torch.arange(10).repeat_interleave(100)  # 10 classes x 100
    parts = P.shards(y, 10, gen(), shards_per_client=2)
    for p in parts:
        assert len(p) == 100
        assert len(torch.unique(y[p])) <= 2


def test_shards_that_do_not_divide_and_too_many_clients():
    with pytest.raises(FedrunError, match="shards_per_client"):
        P.shards(labels_of(1000), 7, gen(), shards_per_client=2)
    with pytest.raises(FedrunError, match="more than the 10 training samples"):
        P.iid(labels_of(10), 11, gen())


def test_natural_follows_groups_and_requires_them():
    groups = torch.tensor([2, 0, 1, 0, 2, 2])
    parts = P.natural(torch.zeros(6, dtype=torch.long), 3, gen(), groups=groups)
    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4, 5]]
    with pytest.raises(FedrunError, match="num_clients=3"):
        P.natural(torch.zeros(6, dtype=torch.long), 4, gen(), groups=groups)
    with pytest.raises(FedrunError, match="partition=natural"):
        P.natural(torch.zeros(6, dtype=torch.long), 3, gen())


def test_lognormal_sizes_at_least_one():
    sizes = P.lognormal_sizes(200, 100, 3.0, gen())
    assert int(sizes.sum()) == 200 and int(sizes.min()) >= 1
    assert math.isclose(float(P.balanced_sizes(10, 3).sum()), 10)


def test_check_partition_names_what_a_custom_partitioner_got_wrong():
    from fedrun.data.partition import check_partition

    ok = [torch.tensor([0, 2]), torch.tensor([1, 3])]
    check_partition(ok, 4, 2, "mine")
    with pytest.raises(FedrunError, match="returned 1 clients for num_clients=2"):
        check_partition(ok[:1], 4, 2, "mine")
    with pytest.raises(FedrunError, match="left client 1 without samples"):
        check_partition([torch.tensor([0, 1, 2, 3]), torch.tensor([], dtype=torch.long)], 4, 2, "mine")
    with pytest.raises(FedrunError, match="training sample 3 is in no client"):
        check_partition([torch.tensor([0, 2]), torch.tensor([1])], 4, 2, "mine")
    with pytest.raises(FedrunError, match="training sample 2 is in 2 clients"):
        check_partition([torch.tensor([0, 2]), torch.tensor([1, 2, 3])], 4, 2, "mine")
    with pytest.raises(FedrunError, match="training sample 4 is out of range"):
        check_partition([torch.tensor([0, 2]), torch.tensor([1, 3, 4])], 4, 2, "mine")
