"""Small image datasets written in the exact on-disk formats torchvision reads (for the loader tests).

* MNIST / EMNIST: big-endian idx files (magic 0x00000803 images [N, 28, 28] uint8, 0x00000801 labels)
  in ``<root>/MNIST/raw/`` and ``<root>/EMNIST/raw/`` under torchvision's file names.
* CIFAR-10 / -100: Python pickles of dicts with ``data`` (uint8 [N, 3072], rows R then G then B plane)
  and ``labels`` / ``fine_labels``, in ``<root>/cifar-10-batches-py/`` and ``<root>/cifar-100-python/``.

torchvision checks the CIFAR pickles against the md5 sums of the real files; :func:`accept_any_cifar`
lifts that check (the test data are not the real files), leaving everything else as torchvision does it.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim  # type 0x08 = unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def write_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", y)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def write_emnist_letters(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels 1..26 as in EMNIST 'letters'."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(1, 27, n, dtype=np.uint8)
        write_idx(root / "EMNIST" / "raw" / f"emnist-letters-{split}-images-idx3-ubyte", x)
        write_idx(root / "EMNIST" / "raw" / f"emnist-letters-{split}-labels-idx1-ubyte", y)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Five training batches of ``per_batch`` images each and one test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": x, "labels": y})
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = rng.integers(0, 10, n_test).tolist()
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": xt, "labels": yt})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return {"x_train": np.concatenate(xs), "y_train": np.array(ys), "x_test": xt, "y_test": np.array(yt)}


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _pickle(folder / split, {"data": x, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]})
        out[f"x_{split}"], out[f"y_{split}"] = x, np.array(fine)
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    return out


def accept_any_cifar() -> None:
    """Drop torchvision's md5 sums for the CIFAR files (in this process), keeping its existence checks."""
    import torchvision.datasets as tvd

    for cls in (tvd.CIFAR10, tvd.CIFAR100):
        cls.train_list = [[name, None] for name, _ in cls.train_list]
        cls.test_list = [[name, None] for name, _ in cls.test_list]
        cls.meta = {**cls.meta, "md5": None}
