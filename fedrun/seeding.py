"""Deterministic random streams derived from (seed, purpose, round, client).

Every random draw in fedrun comes from a generator made here, so results never depend on the
order in which clients are processed (the sequential and vectorised engines agree) and a resumed
run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_PURPOSES = {"data": 1, "partition": 2, "model": 3, "sample": 4, "local": 5, "augment": 6, "held_out": 7, "finetune": 8, "hetero": 9}


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that is a fixed function of ``seed``, ``purpose`` and ``keys``."""
    payload = ",".join(str(int(k)) for k in (seed, _PURPOSES[purpose], *keys)).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little") >> 1


def generator(seed: int, purpose: str, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by :func:`derive_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, *keys))
    return g


def numpy_rng(g: torch.Generator) -> np.random.Generator:
    """A numpy generator whose seed is drawn from the torch generator ``g``."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
