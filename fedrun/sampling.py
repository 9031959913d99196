"""Which clients take part in a round.

``bernoulli`` is the reference code's rule: every client is active independently with probability
p, from a generator seeded by (seed, round, attempt); an empty draw is redrawn with the next attempt.
``fixed`` takes exactly max(1, round(p·m)) clients uniformly without replacement. Both return sorted
client ids and depend only on (seed, round), so every algorithm sees the same active sets.
"""

from __future__ import annotations

import torch

from fedrun.seeding import generator


def bernoulli(num_clients: int, p: float, seed: int, round_idx: int) -> torch.Tensor:
    attempt = 0
    while True:
        g = generator(seed, "sample", round_idx, attempt)
        active = torch.nonzero(torch.rand(num_clients, generator=g, dtype=torch.float64) <= p).flatten()
        if len(active):
            return active
        attempt += 1


def fixed(num_clients: int, p: float, seed: int, round_idx: int) -> torch.Tensor:
    count = max(1, min(num_clients, round(p * num_clients)))
    g = generator(seed, "sample", round_idx, 0)
    return torch.sort(torch.randperm(num_clients, generator=g)[:count]).values


SAMPLERS = {"bernoulli": bernoulli, "fixed": fixed}
