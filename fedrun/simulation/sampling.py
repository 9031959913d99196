"""Which clients take part in a round (``sampling=``).

``bernoulli`` (the default): every client is active independently with probability p, drawn from a
generator seeded by (seed, round, attempt); an empty draw is redrawn from the next attempt's
independent stream, so an empty draw costs nothing but a redraw (at 20 clients and p = 0.1, 0.3%
of rounds repeat the previous round's active set, by chance).

``bernoulli_reference``: the FedDyn authors' exact rule. The draw is the same as ``bernoulli``'s
first attempt, but an empty draw is retried with the *next round's* seed, then the one after, so
the round takes the next round's active set, and that round draws it again: at 20 clients and
p = 0.1 about 12% of rounds ((1 - p)^m) repeat the previous round's set. Each round's distribution
is the same under both rules; only the repeats differ.

``fixed`` takes exactly max(1, round(p·m)) clients uniformly without replacement.

All return sorted client ids and depend only on (seed, round), so every algorithm sees the same
active sets. A draw that stays empty for :data:`MAX_ATTEMPTS` tries is one sentence
(:func:`fedrun.config.checks.validate` refuses such participation values before a run starts).
"""

from __future__ import annotations

import torch

from fedrun.config.specs import Sampling
from fedrun.errors import FedrunError
from fedrun.seeding import generator

MAX_ATTEMPTS = 100_000


def _draw(num_clients: int, p: float, seed: int, round_idx: int, attempt: int) -> torch.Tensor:
    g = generator(seed, "sample", round_idx, attempt)
    return torch.nonzero(torch.rand(num_clients, generator=g, dtype=torch.float64) <= p).flatten()


def _never(num_clients: int, p: float) -> FedrunError:
    return FedrunError(
        f"participation={p:g} with num_clients={num_clients} gave {MAX_ATTEMPTS} empty draws in a row: "
        f"use participation >= {1 / num_clients:.3g} or sampling=fixed."
    )


def bernoulli(num_clients: int, p: float, seed: int, round_idx: int) -> torch.Tensor:
    """Each client active w.p. ``p``; an empty draw is redrawn from an independent stream (default)."""
    for attempt in range(MAX_ATTEMPTS):
        active = _draw(num_clients, p, seed, round_idx, attempt)
        if len(active):
            return active
    raise _never(num_clients, p)


def bernoulli_reference(num_clients: int, p: float, seed: int, round_idx: int) -> torch.Tensor:
    """Each client active w.p. ``p``; an empty draw takes the next round's draw (the reference code)."""
    for ahead in range(MAX_ATTEMPTS):
        active = _draw(num_clients, p, seed, round_idx + ahead, 0)
        if len(active):
            return active
    raise _never(num_clients, p)


def fixed(num_clients: int, p: float, seed: int, round_idx: int) -> torch.Tensor:
    count = max(1, min(num_clients, round(p * num_clients)))
    g = generator(seed, "sample", round_idx, 0)
    return torch.sort(torch.randperm(num_clients, generator=g)[:count]).values


SAMPLERS = {"bernoulli": bernoulli, "bernoulli_reference": bernoulli_reference, "fixed": fixed}


def clients(spec: Sampling, num_clients: int, round_idx: int) -> torch.Tensor:
    """The active clients of round ``round_idx`` under ``spec`` (sorted client ids)."""
    return SAMPLERS[spec.kind](num_clients, spec.participation, spec.seed, round_idx)
