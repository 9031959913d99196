"""Participation samplers: Bernoulli mean size, fixed size, redraw on empty, determinism."""

from __future__ import annotations

import math

import torch

from fedrun.sampling import bernoulli, fixed


def test_bernoulli_mean_size_matches_p():
    m, p, rounds = 100, 0.1, 2000
    sizes = torch.tensor([len(bernoulli(m, p, seed=3, round_idx=r)) for r in range(rounds)], dtype=torch.float64)
    # mean of |P_t| is m·p (the empty redraw shifts it by m·p·(1-p)^m ≈ 3e-4); std error sqrt(m p (1-p)/rounds) ≈ 0.067
    assert abs(sizes.mean().item() - m * p) < 4 * math.sqrt(m * p * (1 - p) / rounds)
    assert abs(sizes.var().item() - m * p * (1 - p)) < 1.5


def test_bernoulli_is_sorted_unique_and_never_empty():
    for r in range(300):
        active = bernoulli(5, 0.05, seed=0, round_idx=r)  # empty with prob 0.77: redraws happen
        assert len(active) >= 1
        assert torch.equal(active, torch.unique(active))


def test_same_seed_and_round_same_clients_across_calls():
    assert torch.equal(bernoulli(50, 0.2, 7, 11), bernoulli(50, 0.2, 7, 11))
    draws = {tuple(bernoulli(50, 0.2, 7, r).tolist()) for r in range(20)}
    assert len(draws) > 15


def test_fixed_takes_exactly_round_pm():
    for p, expected in ((0.1, 10), (0.25, 25), (1.0, 100), (0.001, 1)):
        active = fixed(100, p, 0, 1)
        assert len(active) == expected and len(torch.unique(active)) == expected


def test_full_participation_is_everyone():
    assert torch.equal(bernoulli(17, 1.0, 0, 1), torch.arange(17))
