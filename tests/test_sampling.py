"""Participation samplers: Bernoulli mean size, fixed size, redraw on empty, determinism."""

from __future__ import annotations

import math

import torch

from fedrun.simulation.sampling import bernoulli, fixed


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


def test_bernoulli_reference_retries_with_the_next_rounds_draw():
    """The reference rule: a round whose own draw is empty takes the next round's draw, so it
    repeats in the next round. At m=20, p=0.1 a draw is empty w.p. 0.9^20 = 0.1216; over 3000 rounds
    the share of rounds equal to their predecessor is 0.1216 +- 4 x sqrt(0.12 x 0.88 / 3000) = 0.024.
    The default (independent redraw) repeats only by chance (0.3%)."""
    from fedrun.simulation.sampling import bernoulli_reference

    m, p, rounds = 20, 0.1, 3000
    ref = [tuple(bernoulli_reference(m, p, 5, r).tolist()) for r in range(1, rounds + 1)]
    default = [tuple(bernoulli(m, p, 5, r).tolist()) for r in range(1, rounds + 1)]
    repeats = sum(a == b for a, b in zip(ref, ref[1:])) / (rounds - 1)
    assert abs(repeats - 0.9**20) < 0.024
    assert sum(a == b for a, b in zip(default, default[1:])) / (rounds - 1) < 0.02
    for r in range(1, 200):  # a non-empty own draw is the same under both rules
        own = bernoulli(m, p, 5, r)
        if len(bernoulli_reference(m, p, 5, r)) and torch.equal(bernoulli_reference(m, p, 5, r), own):
            continue
        assert torch.equal(bernoulli_reference(m, p, 5, r), bernoulli_reference(m, p, 5, r + 1))
