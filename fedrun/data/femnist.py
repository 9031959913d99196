"""LEAF's FEMNIST: handwritten digits and letters by writer (62 classes, 28x28 grey), one client per writer.

Read from LEAF's preprocessed JSON in ``data.root`` (``data/femnist/data`` of a LEAF checkout after
``preprocess.sh``), the same layout as Shakespeare's (:mod:`fedrun.data.shakespeare`): either split
(``train/*.json`` and ``test/*.json``, each ``{"users": [...], "num_samples": [...], "user_data":
{writer: {"x": [[784 floats]], "y": [class]}}}``) or not (``all_data/*.json``, split here per writer
as LEAF's ``split_data.py --by_sample``: a random ``train_fraction`` of each writer's samples, at
least one on each side). ``x`` is LEAF's flattened image, kept as its floats in [0, 1], shaped
[1, 28, 28]; ``y`` the class (0-9 digits, 10-35 upper case, 36-61 lower case).

Writers with at least ``min_samples`` training samples and one test sample are eligible;
``num_clients`` of them are chosen at random (seeded), in a fixed order; ``partition=natural``
makes each one client (``groups``). The test set is the chosen writers' test samples together (LEAF
evaluates on the union of its users' test data). No download: LEAF builds the files from NIST's
archive with its own scripts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedrun.data import FederatedData
from fedrun.data.cache import resolve_root
from fedrun.data.leaf import read_users
from fedrun.errors import FedrunError
from fedrun.seeding import generator

SIDE = 28
NUM_CLASSES = 62


def _read_users(files: list[Path]) -> dict[str, dict]:
    return read_users(files, "femnist", ": write LEAF's FEMNIST files there again (data/femnist/preprocess.sh).")


def _arrays(name: str, user: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(user["x"], dtype=np.float32)
    y = np.asarray(user["y"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != SIDE * SIDE or len(x) != len(y):
        raise FedrunError(f"data=femnist: writer {name} has inputs of shape {x.shape} for {len(y)} labels: LEAF's FEMNIST has 784 pixels per sample.")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise FedrunError(f"data=femnist: writer {name} has a label outside 0..61: use LEAF's FEMNIST labels.")
    return x, y


def read_writers(root: Path, train_fraction: float, g: torch.Generator) -> list[tuple[str, tuple, tuple]]:
    """(writer, (x_train, y_train), (x_test, y_test)) of every writer found, sorted by name."""
    train_files, test_files = sorted((root / "train").glob("*.json")), sorted((root / "test").glob("*.json"))
    if train_files and test_files:
        train, test = _read_users(train_files), _read_users(test_files)
        return [(u, _arrays(u, train[u]), _arrays(u, test[u])) for u in sorted(set(train) & set(test))]
    out = []
    users = _read_users(sorted((root / "all_data").glob("*.json")))
    for u in sorted(users):
        x, y = _arrays(u, users[u])
        if len(y) < 2:
            continue
        n_train = min(len(y) - 1, max(1, math.floor(train_fraction * len(y))))
        order = torch.randperm(len(y), generator=g).numpy()
        tr, te = np.sort(order[:n_train]), np.sort(order[n_train:])
        out.append((u, (x[tr], y[tr]), (x[te], y[te])))
    return out


def load_femnist(
    num_clients: int,
    seed: int,
    root: Optional[str] = None,
    min_samples: int = 1,
    train_fraction: float = 0.9,
) -> FederatedData:
    """``num_clients`` FEMNIST writers from LEAF's JSON (see the module doc)."""
    if not 0.0 < train_fraction < 1.0:
        raise FedrunError(f"data.train_fraction={train_fraction} is out of range: use a fraction in (0, 1), e.g. 0.9 as LEAF.")
    if min_samples < 1:
        raise FedrunError(f"data.min_samples={min_samples} is impossible: use at least 1 training sample per writer.")
    folder = resolve_root(root, "femnist")
    g = generator(seed, "data")
    writers = read_writers(folder, train_fraction, g) if folder.is_dir() else []
    if not writers:
        raise FedrunError(
            f"data=femnist found no LEAF JSON in {folder} (train/*.json and test/*.json, or all_data/*.json): run LEAF's "
            "data/femnist/preprocess.sh (e.g. -s niid --sf 0.05 -k 0 -t sample) and point data.root at its data/ folder."
        )
    eligible = [w for w in writers if len(w[1][1]) >= min_samples and len(w[2][1]) >= 1]
    if len(eligible) < num_clients:
        raise FedrunError(
            f"data=femnist: only {len(eligible)} writers in {folder} have at least {min_samples} training samples and a test "
            f"sample: set num_clients={len(eligible)} (or fewer), or lower data.min_samples."
        )
    chosen = sorted(int(i) for i in torch.randperm(len(eligible), generator=g)[:num_clients])
    picked = [eligible[i] for i in chosen]
    image = lambda parts: torch.from_numpy(np.concatenate(parts)).view(-1, 1, SIDE, SIDE)  # noqa: E731
    label = lambda parts: torch.from_numpy(np.concatenate(parts))  # noqa: E731
    x_train, y_train = image([w[1][0] for w in picked]), label([w[1][1] for w in picked])
    x_test, y_test = image([w[2][0] for w in picked]), label([w[2][1] for w in picked])
    groups = torch.repeat_interleave(torch.arange(num_clients), torch.tensor([len(w[1][1]) for w in picked]))
    return FederatedData(
        "femnist", x_train, y_train, x_test, y_test, NUM_CLASSES, groups,
        info={"root": str(folder), "writers": [w[0] for w in picked], "writers_found": len(writers), "eligible": len(eligible)},
    )
