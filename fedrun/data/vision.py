"""The paper's image datasets through torchvision: MNIST, EMNIST-L, CIFAR-10, CIFAR-100.

Each loader fetches the raw files with ``torchvision.datasets`` (``download``) into ``root``, converts
them once into a verified tensor cache (``<root>/fedrun_cache/<name>.pt``: uint8 images [N, C, H, W]
and int64 labels per split, see :mod:`fedrun.data.cache`) and returns float32 tensors normalised as
the FedDyn reference code does (docs/paper.md):

* MNIST: (x/255 − 0.1307) / 0.3081;
* EMNIST-L: the 'letters' split restricted to its first 10 letters (labels 1..10 → 0..9; 48,000 train
  / 8,000 test), normalised by the training set's own mean and standard deviation (one scalar each);
* CIFAR-10 / CIFAR-100: per-channel (x/255 − mean) / std with the reference code's constants, and
  the reference training augmentation (:class:`~fedrun.data.augment.FlipCrop`) unless ``augment`` is off.

``root`` defaults to ``$FEDRUN_DATA`` or a per-user cache folder (``~/.cache/fedrun/data``).
torchvision is imported only here, so the other datasets work without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from fedrun.data import FederatedData
from fedrun.data import cache
from fedrun.data.augment import FlipCrop
from fedrun.errors import FedrunError

log = logging.getLogger("fedrun")

CIFAR10_MEAN, CIFAR10_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
EMNIST_LETTERS = 10  # the paper keeps the first 10 letters (a..j)


@dataclass(frozen=True)
class Source:
    """Where torchvision keeps one dataset's files under ``root`` and how to read them."""

    name: str
    folder: str
    files: tuple[str, ...]
    read: Callable[[object, Path, bool], dict[str, torch.Tensor]]


def _torchvision():
    try:
        import torchvision.datasets as tvd
    except Exception as err:  # noqa: BLE001 - any import failure is the same fix for the user
        raise FedrunError(
            f"this dataset is read through torchvision, which failed to import ({type(err).__name__}: {err}): "
            "install a torchvision that matches your torch (pip install torchvision)."
        ) from None
    return tvd


def _read_idx(cls: Callable[..., object], root: Path, download: bool, **kwargs: object) -> dict[str, torch.Tensor]:
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(str(root), train=train, download=download, **kwargs)
        out[f"x_{split}"] = ds.data.to(torch.uint8).unsqueeze(1).contiguous()
        out[f"y_{split}"] = torch.as_tensor(ds.targets, dtype=torch.int64)
    return out


def _read_mnist(tvd: object, root: Path, download: bool) -> dict[str, torch.Tensor]:
    return _read_idx(tvd.MNIST, root, download)


def _read_emnist_letters(tvd: object, root: Path, download: bool) -> dict[str, torch.Tensor]:
    raw = _read_idx(tvd.EMNIST, root, download, split="letters")
    out = {}
    for split in ("train", "test"):
        y = raw[f"y_{split}"]
        keep = (y >= 1) & (y <= EMNIST_LETTERS)
        out[f"x_{split}"] = raw[f"x_{split}"][keep].contiguous()
        out[f"y_{split}"] = y[keep] - 1
    return out


def _read_cifar(cls_name: str) -> Callable[[object, Path, bool], dict[str, torch.Tensor]]:
    def read(tvd: object, root: Path, download: bool) -> dict[str, torch.Tensor]:
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
            out[f"x_{split}"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
            out[f"y_{split}"] = torch.as_tensor(ds.targets, dtype=torch.int64)
        return out

    return read


_IDX = ("images-idx3-ubyte", "labels-idx1-ubyte")
SOURCES = {
    "mnist": Source("MNIST", "MNIST/raw", tuple(f"{s}-{k}" for s in ("train", "t10k") for k in _IDX), _read_mnist),
    "emnist_l": Source(
        "EMNIST", "EMNIST/raw", tuple(f"emnist-letters-{s}-{k}" for s in ("train", "test") for k in _IDX), _read_emnist_letters
    ),
    "cifar10": Source(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        _read_cifar("CIFAR10"),
    ),
    "cifar100": Source("CIFAR-100", "cifar-100-python", ("train", "test", "meta"), _read_cifar("CIFAR100")),
}


def raw_tensors(name: str, root: Optional[str], download: bool) -> tuple[dict[str, torch.Tensor], Path]:
    """uint8 images and int64 labels of both splits, from the cache or converted from torchvision's files."""
    src = SOURCES[name]
    folder = cache.resolve_root(root)
    path = folder / "fedrun_cache" / f"{name}.pt"

    def build() -> dict[str, torch.Tensor]:
        tvd = _torchvision()
        try:
            out = src.read(tvd, folder, download)
            log.info("fedrun: converted %s in %s into the tensor cache %s", src.name, folder, path)
            return out
        except FedrunError:
            raise
        except Exception as err:  # noqa: BLE001 - torchvision raises RuntimeError, URLError, OSError, ...
            how = "downloading failed" if download else "data.download=false"
            detail = str(err).strip().splitlines()[0][:120].rstrip(":") if str(err).strip() else type(err).__name__
            here = folder / src.folder
            present = [f for f in src.files if any(here.glob(f + "*"))] if here.is_dir() else []
            if present and not download:
                raise FedrunError(
                    f"data={name}: the {src.name} files in {here} cannot be read, so one is probably truncated or corrupt "
                    f"({detail}): delete them and run once with internet and data.download=true, or copy intact "
                    f"torchvision {src.name} files there ({', '.join(src.files)})."
                ) from None
            raise FedrunError(
                f"data={name}: {src.name} was not found in {here} ({how}: {detail}); "
                f"it needs the files {', '.join(src.files)} there: run once with internet and data.download=true, "
                f"or copy torchvision's {src.name} files into that folder (or point data.root or $FEDRUN_DATA at a folder that has them)."
            ) from None

    return cache.cached(path, build, {"dataset": name}), path


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float().div_(255.0).sub_(m)).div_(s)


def _make(
    name: str,
    raw: dict[str, torch.Tensor],
    path: Path,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool = False,
) -> FederatedData:
    return FederatedData(
        name,
        _normalise(raw["x_train"], mean, std),
        raw["y_train"],
        _normalise(raw["x_test"], mean, std),
        raw["y_test"],
        num_classes,
        groups=None,
        augment=FlipCrop() if augment else None,
        info={"cache": str(path), "mean": list(mean), "std": list(std), "augment": augment},
    )


def load_mnist(num_clients: int, seed: int, root: Optional[str] = None, download: bool = True) -> FederatedData:
    """MNIST 60k/10k, normalised with (0.1307, 0.3081)."""
    raw, path = raw_tensors("mnist", root, download)
    return _make("mnist", raw, path, 10, (MNIST_MEAN,), (MNIST_STD,))


def load_emnist_l(num_clients: int, seed: int, root: Optional[str] = None, download: bool = True) -> FederatedData:
    """EMNIST letters a..j (48k/8k), normalised by the training set's mean and std."""
    raw, path = raw_tensors("emnist_l", root, download)
    x = raw["x_train"].double() / 255.0
    mean, std = float(x.mean()), float(x.std(unbiased=False))
    return _make("emnist_l", raw, path, EMNIST_LETTERS, (mean,), (std,))


def load_cifar10(
    num_clients: int, seed: int, root: Optional[str] = None, download: bool = True, augment: bool = True
) -> FederatedData:
    """CIFAR-10 50k/10k, per-channel normalised; training augmentation flip + crop unless ``augment`` is off."""
    raw, path = raw_tensors("cifar10", root, download)
    return _make("cifar10", raw, path, 10, CIFAR10_MEAN, CIFAR10_STD, augment)


def load_cifar100(
    num_clients: int, seed: int, root: Optional[str] = None, download: bool = True, augment: bool = True
) -> FederatedData:
    """CIFAR-100 50k/10k (fine labels), per-channel normalised; flip + crop augmentation unless off."""
    raw, path = raw_tensors("cifar100", root, download)
    return _make("cifar100", raw, path, 100, CIFAR100_MEAN, CIFAR100_STD, augment)
