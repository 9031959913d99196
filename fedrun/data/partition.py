"""Partitioners: pure functions ``(labels, num_clients, generator, groups=None) -> list of index tensors``.

Each returns one int64 tensor of training-sample indices per client; together they cover every
sample exactly once (``shards`` and ``natural`` included). ``groups`` (the natural client of every
sample) is read only by :func:`natural`. Every random draw comes from ``generator``, so the split is
a function of the seed. The procedures follow the FedDyn reference code (docs/paper.md, "Partitions").
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import numpy as np
import torch

from fedrun.config.bounds import AT_LEAST_1, POSITIVE, Bound
from fedrun.errors import FedrunError
from fedrun.seeding import numpy_rng

Partition = list[torch.Tensor]
# a larger lognormal spread puts nearly every sample on one client (exp(sigma * z) overflows near 700)
SIGMA = Bound(0, 5, what="a lognormal spread in [0, 5] (the reference code uses 0.3)")


def _check_counts(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise FedrunError(f"num_clients={num_clients} is impossible: use at least 1 client.")
    if num_clients > n:
        raise FedrunError(
            f"num_clients={num_clients} is more than the {n} training samples: use num_clients <= {n}."
        )


def balanced_sizes(n: int, num_clients: int) -> torch.Tensor:
    """Sizes as equal as possible (the first ``n % num_clients`` clients get one more)."""
    _check_counts(n, num_clients)
    sizes = torch.full((num_clients,), n // num_clients, dtype=torch.long)
    sizes[: n % num_clients] += 1
    return sizes


def lognormal_sizes(n: int, num_clients: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Reference code's unbalanced sizes: lognormal(log(n/m), sigma), rescaled to sum to n.

    Sizes are floored after rescaling; the remainder goes to clients one at a time (largest
    fractional part first), and every client keeps at least one sample.
    """
    _check_counts(n, num_clients)
    if sigma < 0:
        raise FedrunError(f"partition.sigma={sigma} is negative: use a lognormal spread >= 0.")
    raw = torch.exp(math.log(n / num_clients) + sigma * torch.randn(num_clients, generator=generator, dtype=torch.float64))
    scaled = raw / raw.sum() * (n - num_clients)  # reserve one sample per client
    sizes = scaled.floor().long()
    remainder = n - num_clients - int(sizes.sum())
    order = torch.argsort(scaled - sizes, descending=True)
    sizes[order[:remainder]] += 1
    return sizes + 1


def _split(order: torch.Tensor, sizes: torch.Tensor) -> Partition:
    return [part.clone() for part in torch.split(order, sizes.tolist())]


def _iid(labels: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> Partition:
    return _split(torch.randperm(len(labels), generator=generator), sizes)


def _dirichlet(labels: torch.Tensor, sizes: torch.Tensor, alpha: float, generator: torch.Generator) -> Partition:
    """The reference code's exact-size Dirichlet procedure.

    Each client draws a class prior from Dir(alpha). Repeatedly a not-yet-full client is picked
    uniformly at random, a class is drawn from its prior and the next unused sample of that class
    is given to it. The reference redraws the class while it is used up; drawing from the prior
    renormalised over the classes that are left is the same distribution and cannot stall.
    """
    if alpha <= 0:
        raise FedrunError(f"partition.alpha={alpha} is not positive: use a Dirichlet concentration > 0 (e.g. 0.3).")
    rng = numpy_rng(generator)
    y = labels.cpu().numpy()
    num_classes = int(y.max()) + 1
    m = len(sizes)
    priors = rng.dirichlet([alpha] * num_classes, size=m)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in range(num_classes)]
    left = np.array([len(p) for p in pools], dtype=np.int64)
    need = sizes.numpy().copy()
    out: list[list[int]] = [[] for _ in range(m)]
    open_clients = list(range(m))
    while open_clients:
        pos = int(rng.integers(len(open_clients)))
        k = open_clients[pos]
        prior = priors[k] * (left > 0)
        total = prior.sum()
        if total <= 0:  # the client's prior sits entirely on used-up classes: fall back to what is left
            prior, total = (left > 0).astype(float), float((left > 0).sum())
        c = int(np.searchsorted(np.cumsum(prior), rng.random() * total, side="right"))
        c = min(c, num_classes - 1)
        while left[c] == 0:  # guards the float edge of searchsorted
            c = (c + 1) % num_classes
        left[c] -= 1
        out[k].append(int(pools[c][left[c]]))
        need[k] -= 1
        if need[k] == 0:
            open_clients[pos] = open_clients[-1]
            open_clients.pop()
    return [torch.tensor(sorted(ix), dtype=torch.long) for ix in out]


def iid(labels: torch.Tensor, num_clients: int, generator: torch.Generator, groups: Optional[torch.Tensor] = None) -> Partition:
    """Balanced IID: consecutive slices of a shuffled training set, sizes differing by at most 1."""
    return _iid(labels, balanced_sizes(len(labels), num_clients), generator)


def dirichlet(
    labels: torch.Tensor,
    num_clients: int,
    generator: torch.Generator,
    groups: Optional[torch.Tensor] = None,
    alpha: Annotated[float, POSITIVE] = 0.3,
) -> Partition:
    """Balanced sizes, Dirichlet(alpha) label skew (the paper's 0.6 and 0.3)."""
    return _dirichlet(labels, balanced_sizes(len(labels), num_clients), alpha, generator)


def unbalanced(
    labels: torch.Tensor,
    num_clients: int,
    generator: torch.Generator,
    groups: Optional[torch.Tensor] = None,
    sigma: Annotated[float, SIGMA] = 0.3,
    alpha: Annotated[Optional[float], POSITIVE] = None,
) -> Partition:
    """Lognormal(sigma) sizes with IID labels, or Dirichlet(alpha) labels when ``alpha`` is set."""
    sizes = lognormal_sizes(len(labels), num_clients, sigma, generator)
    if alpha is None:
        return _iid(labels, sizes, generator)
    return _dirichlet(labels, sizes, alpha, generator)


def shards(
    labels: torch.Tensor,
    num_clients: int,
    generator: torch.Generator,
    groups: Optional[torch.Tensor] = None,
    shards_per_client: Annotated[int, AT_LEAST_1] = 2,
) -> Partition:
    """McMahan et al.'s pathological split: sort by label, cut into equal shards, k shards each."""
    n = len(labels)
    _check_counts(n, num_clients)
    num_shards = num_clients * shards_per_client
    if shards_per_client < 1 or n % num_shards != 0:
        raise FedrunError(
            f"partition=shards cannot cut {n} samples into num_clients*shards_per_client={num_shards} equal shards: "
            f"choose num_clients and partition.shards_per_client whose product divides {n}."
        )
    # Stable sort by label after a shuffle, so ties are broken at random.
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.sort(labels.cpu()[perm], stable=True).indices]
    pieces = order.view(num_shards, n // num_shards)
    assignment = torch.randperm(num_shards, generator=generator).view(num_clients, shards_per_client)
    return [torch.sort(pieces[row].reshape(-1)).values for row in assignment]


def natural(labels: torch.Tensor, num_clients: int, generator: torch.Generator, groups: Optional[torch.Tensor] = None) -> Partition:
    """The dataset's own clients (synthetic devices, Shakespeare roles)."""
    if groups is None:
        raise FedrunError(
            "partition=natural needs data that comes federated (data=synthetic or data=shakespeare): "
            "choose partition=iid, dirichlet, unbalanced or shards for this dataset."
        )
    groups = groups.cpu()
    found = int(groups.max()) + 1
    if found != num_clients:
        raise FedrunError(
            f"partition=natural found {found} clients in the data but num_clients={num_clients}: set num_clients={found}."
        )
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=num_clients)
    if (sizes == 0).any():
        raise FedrunError(f"partition=natural: client {int(torch.nonzero(sizes == 0)[0])} has no samples.")
    return _split(order, sizes)


def check_partition(partition: Partition, num_samples: int, num_clients: int, name: str) -> None:
    """One sentence when a partitioner (a custom one above all) breaks the contract: one index tensor
    per client, no client empty, every training sample in exactly one client."""
    if len(partition) != num_clients:
        raise FedrunError(f"partition={name} returned {len(partition)} clients for num_clients={num_clients}: return one index tensor per client.")
    sizes = [len(p) for p in partition]
    if 0 in sizes:
        raise FedrunError(f"partition={name} left client {sizes.index(0)} without samples: give every client at least one (or use fewer clients).")
    every = torch.cat([p.reshape(-1).long().cpu() for p in partition])
    outside = every[(every < 0) | (every >= num_samples)]
    if len(outside):
        raise FedrunError(f"partition={name}: training sample {int(outside[0])} is out of range: indices must be in [0, {num_samples}).")
    counts = torch.bincount(every, minlength=num_samples)
    if bool((counts != 1).any()):
        bad = int(torch.nonzero(counts != 1)[0])
        problem = "is in no client" if counts[bad] == 0 else f"is in {int(counts[bad])} clients"
        raise FedrunError(f"partition={name}: training sample {bad} {problem}: a partition must put every sample in exactly one client.")
