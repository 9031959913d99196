"""Checks that a config's sizes can run at all, before anything is allocated.

* Bernoulli sampling (``sampling=bernoulli`` / ``bernoulli_reference``) with an expected number of
  active clients so small that nearly every draw is empty would redraw (almost) forever: refused
  when more than 99% of draws would be empty.
* More clients than fedrun can index (int32 client ids in the engines' gathers).
* Synthetic data whose generation alone needs more memory than the machine has.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from fedrun.errors import FedrunError

MAX_CLIENTS = 2**31 - 1
EMPTY_DRAWS = 0.99  # refuse when more than this fraction of Bernoulli draws would be empty


def host_total_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 2**62


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_sizes(m: int, p: float, sampling: str, data: Optional[Mapping[str, Any]] = None) -> None:
    """``m`` clients, participation ``p``, the ``sampling`` rule and the data group's keys."""
    if m > MAX_CLIENTS:
        raise FedrunError(f"num_clients={m} is more than fedrun can index ({MAX_CLIENTS}): use fewer clients.")
    if sampling.startswith("bernoulli") and 0 < p < 1:
        empty = math.exp(m * math.log1p(-p))  # P(no client active) = (1 - p)^m
        if empty > EMPTY_DRAWS:
            raise FedrunError(
                f"participation={p:g} with num_clients={m} leaves {100 * empty:.4g}% of rounds' draws empty, so sampling "
                f"would redraw almost forever: use participation >= {1 / m:.3g} (one client per round on average) or sampling=fixed."
            )
    if data is not None and str(data.get("_target_", "")).endswith("make_synthetic"):
        samples, dim = float(data.get("mean_samples", 200)), int(data.get("dim", 30))
        need = 8 * m * samples * (dim + 1)  # float64 features + label
        total = host_total_bytes()
        if need > total:
            # name the factors in the order they exceed the paper's example (20 clients, 200 samples, 30 features)
            factors = sorted([(m / 20, f"num_clients={m}"), (samples / 200, f"data.mean_samples={data.get('mean_samples', 200)}"),
                              (dim / 30, f"data.dim={dim}")], key=lambda f: -f[0])
            keys = [k for _, k in factors]
            raise FedrunError(
                f"data=synthetic with {', '.join(keys)} needs about {gib(need)} of memory (clients x samples x features), "
                f"more than this machine's {gib(total)}: lower {keys[0].split('=')[0]} (or {' or '.join(k.split('=')[0] for k in keys[1:])})."
            )
