"""Image loaders on small files in torchvision's real on-disk formats; the tensor cache; augmentation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedrun.data import cache, vision
from fedrun.data.augment import FlipCrop
from fedrun.errors import FedrunError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vision_files as vf  # noqa: E402



@pytest.fixture
def cifar_md5_off():
    """torchvision's CIFAR md5 lists, lifted for the generated files and restored afterwards."""
    import torchvision.datasets as tvd

    saved = [(c, c.train_list, c.test_list, c.meta) for c in (tvd.CIFAR10, tvd.CIFAR100)]
    vf.accept_any_cifar()
    yield
    for c, train, test, meta in saved:
        c.train_list, c.test_list, c.meta = train, test, meta


def test_mnist_reads_idx_files_and_normalises(tmp_path):
    raw = vf.write_mnist(tmp_path, 40, 12)
    d = vision.load_mnist(4, 0, root=str(tmp_path), download=False)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    expect = (raw["x_train"].astype(np.float64) / 255 - 0.1307) / 0.3081
    assert np.allclose(d.x_train[:, 0].numpy(), expect, atol=1e-5)
    assert d.y_train.tolist() == raw["y_train"].tolist() and d.y_test.tolist() == raw["y_test"].tolist()
    assert d.num_classes == 10 and d.groups is None and d.augment is None


def test_emnist_keeps_first_ten_letters_and_uses_train_statistics(tmp_path):
    raw = vf.write_emnist_letters(tmp_path, 300, 120)
    d = vision.load_emnist_l(4, 0, root=str(tmp_path), download=False)
    keep = (raw["y_train"] >= 1) & (raw["y_train"] <= 10)
    assert len(d.y_train) == keep.sum() and 0 < keep.sum() < 300
    assert d.y_train.tolist() == (raw["y_train"][keep].astype(int) - 1).tolist()
    assert d.y_train.min() >= 0 and d.y_train.max() <= 9 and d.num_classes == 10
    assert abs(float(d.x_train.double().mean())) < 1e-5 and abs(float(d.x_train.double().std(unbiased=False)) - 1) < 1e-5
    x = raw["x_train"][keep].astype(np.float64)
    keep_t = (raw["y_test"] >= 1) & (raw["y_test"] <= 10)
    expect_test = (raw["x_test"][keep_t] - x.mean()) / x.std()  # test normalised by the TRAIN mean/std
    assert np.allclose(d.x_test[:, 0].numpy(), expect_test, atol=1e-4)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickled_batches_in_channel_order(tmp_path, cifar_md5_off, name):
    if name == "cifar10":
        raw = vf.write_cifar10(tmp_path, 6, 5)
        d = vision.load_cifar10(4, 0, root=str(tmp_path), download=False)
        mean, std, classes = vision.CIFAR10_MEAN, vision.CIFAR10_STD, 10
    else:
        raw = vf.write_cifar100(tmp_path, 30, 5)
        d = vision.load_cifar100(4, 0, root=str(tmp_path), download=False)
        mean, std, classes = vision.CIFAR100_MEAN, vision.CIFAR100_STD, 100
    n = len(raw["y_train"])
    assert d.x_train.shape == (n, 3, 32, 32) and d.num_classes == classes
    # a row of a CIFAR pickle is the R plane, then G, then B, each row-major 32x32
    img = raw["x_train"].reshape(n, 3, 32, 32).astype(np.float64) / 255
    expect = (img - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert np.allclose(d.x_train.numpy(), expect, atol=1e-5)
    assert d.y_train.tolist() == raw["y_train"].tolist()
    assert isinstance(d.augment, FlipCrop)
    off = vision.load_cifar10 if name == "cifar10" else vision.load_cifar100
    assert off(4, 0, root=str(tmp_path), download=False, augment=False).augment is None


def test_cache_round_trip_needs_no_raw_files(tmp_path):
    vf.write_mnist(tmp_path, 30, 10)
    first = vision.load_mnist(4, 0, root=str(tmp_path), download=False)
    entry = tmp_path / "fedrun_cache" / "mnist.pt"
    record = json.loads((tmp_path / "fedrun_cache" / "mnist.pt.json").read_text())
    assert record["bytes"] == entry.stat().st_size
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        f.unlink()
    again = vision.load_mnist(4, 0, root=str(tmp_path), download=False)  # from the cache alone
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    stored = cache.load(entry)
    assert stored["x_train"].dtype == torch.uint8 and stored["y_train"].dtype == torch.int64


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_sidecar", "garbage", "null_sidecar", "missing_tensor"])
def test_corrupt_cache_is_rebuilt_never_trusted(tmp_path, damage, caplog):
    raw = vf.write_mnist(tmp_path, 30, 10)
    vision.load_mnist(4, 0, root=str(tmp_path), download=False)
    entry = tmp_path / "fedrun_cache" / "mnist.pt"
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip_byte":
        data[len(data) - 100] ^= 0xFF  # same length, different content: only the hash can tell
        entry.write_bytes(bytes(data))
    elif damage == "no_sidecar":
        (tmp_path / "fedrun_cache" / "mnist.pt.json").unlink()
    elif damage == "null_sidecar":
        (tmp_path / "fedrun_cache" / "mnist.pt.json").write_text("null")
    elif damage == "missing_tensor":  # a whole, verifying entry that lacks one of its tensors
        import hashlib
        import io

        tensors = torch.load(entry, weights_only=True)
        tensors.pop("y_test")
        buf = io.BytesIO()
        torch.save(tensors, buf)
        entry.write_bytes(buf.getvalue())
        side = tmp_path / "fedrun_cache" / "mnist.pt.json"
        rec = json.loads(side.read_text())
        side.write_text(json.dumps({**rec, "bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}))
    else:
        entry.write_bytes(b"not a torch file" * 10)
        side = tmp_path / "fedrun_cache" / "mnist.pt.json"
        rec = json.loads(side.read_text())
        import hashlib

        side.write_text(json.dumps({**rec, "bytes": 160, "sha256": hashlib.sha256(b"not a torch file" * 10).hexdigest()}))
    assert cache.load(entry) is None
    caplog.clear()
    d = vision.load_mnist(4, 0, root=str(tmp_path), download=False)  # rebuilt from the raw files
    assert d.y_train.tolist() == raw["y_train"].tolist()
    assert cache.load(entry) is not None
    said = [r.getMessage() for r in caplog.records if "rebuilding it from the source files" in r.getMessage()]
    assert len(said) == 1 and f"the dataset cache {entry} is damaged (" in said[0], said  # once, naming the file
    caplog.clear()
    vision.load_mnist(4, 0, root=str(tmp_path), download=False)  # the rebuilt entry verifies: no second rebuild
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
    # damaged cache and no raw files: an error naming the cache file, not the damaged data
    entry.write_bytes(entry.read_bytes()[:-10])
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        f.unlink()
    with pytest.raises(FedrunError, match="data.download") as err:
        vision.load_mnist(4, 0, root=str(tmp_path), download=False)
    assert str(err.value).startswith(f"the dataset cache {entry} is damaged (stale or truncated) and rebuilding it failed: data=mnist:")
    assert "\n" not in str(err.value)


def test_missing_files_one_sentence_names_folder_and_files(tmp_path):
    with pytest.raises(FedrunError) as err:
        vision.load_cifar10(4, 0, root=str(tmp_path / "empty"), download=False)
    msg = str(err.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "data.download=true" in msg
    assert "\n" not in msg


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(FedrunError, match="downloading failed.*MNIST/raw|MNIST/raw.*downloading failed"):
        vision.load_mnist(4, 0, root=str(tmp_path), download=True)


def test_broken_torchvision_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)  # import fails
    with pytest.raises(FedrunError, match="torchvision"):
        vision.load_mnist(4, 0, root=str(tmp_path), download=False)


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDRUN_DATA", str(tmp_path / "x"))
    assert cache.resolve_root(None) == tmp_path / "x"
    assert cache.resolve_root(str(tmp_path / "y")) == tmp_path / "y"
    monkeypatch.delenv("FEDRUN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.resolve_root(None) == tmp_path / "xdg" / "fedrun" / "data"


# --- augmentation ------------------------------------------------------------------------------


def _batch(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 5.0  # no zeros inside


def test_flip_is_an_exact_mirror_and_off_is_identity():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(FlipCrop(p_flip=1.0, p_crop=0.0)(x, g), x.flip(-1))
    assert torch.equal(FlipCrop(p_flip=0.0, p_crop=0.0)(x, g), x)


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _batch(40)
    out = FlipCrop(p_flip=0.0, p_crop=1.0)(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts = set()
    for i in range(len(x)):
        found = [(a, b) for a in range(9) for b in range(9) if torch.equal(out[i], padded[i, :, a : a + 32, b : b + 32])]
        assert len(found) == 1, "every output is exactly one window of its padded image"
        shifts.add(found[0])
        # pixels from outside the image are zeros, the rest are the image's own values
        a, b = found[0]
        inside = padded[i, :, a : a + 32, b : b + 32] != 0
        assert torch.equal(out[i][inside], padded[i, :, a : a + 32, b : b + 32][inside])
    assert len(shifts) > 10  # offsets vary over 0..8 x 0..8


def test_augmentation_draws_only_from_the_given_generator_and_mixes():
    x = _batch(2000)
    aug = FlipCrop()
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    flip, offsets = aug.draw(2000, torch.Generator().manual_seed(7))
    cropped = (offsets != 4).any(1)
    assert 0.45 < flip.float().mean() < 0.55
    # an offset of (4, 4) is "no crop" or a crop that drew the centre (1/81 of crops)
    assert 0.45 < cropped.float().mean() < 0.55
    assert torch.equal(a, aug.apply(x, flip, offsets))
    assert torch.equal(aug(x[:0], torch.Generator()), x[:0])


# --- configs and end to end ----------------------------------------------------------------------


def test_dataset_brings_paper_defaults_and_command_line_wins(compose_cfg):
    cfg = compose_cfg("data=cifar10")
    assert cfg.model._target_ == "fedrun.models.CNN" and cfg.partition._target_ == "fedrun.data.partition.iid"
    assert (cfg.num_clients, cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (100, 5, 50, 0.1, 1e-3)
    cfg = compose_cfg("data=mnist", "lr=0.05", "model=logreg", "batch_size=7")
    assert cfg.model._target_ == "fedrun.models.LogisticRegression" and cfg.lr == 0.05 and cfg.batch_size == 7
    assert list(compose_cfg("data=mnist").model.hidden) == [200, 200]
    assert list(compose_cfg("data=emnist_l").model.hidden) == [100, 100]
    plain = compose_cfg()
    assert plain.data._target_.endswith("make_synthetic") and plain.model._target_.endswith("LogisticRegression")
    assert plain.partition._target_.endswith("natural") and plain.batch_size == 10 and plain.weight_decay == 1e-5


def test_a_run_on_cifar_shaped_data_end_to_end(tmp_path, cifar_md5_off, compose_cfg):
    from fedrun.runner import run

    vf.write_cifar10(tmp_path / "data", 8, 10)  # 40 training images
    cfg = compose_cfg(
        "data=cifar10", f"data.root={tmp_path / 'data'}", "data.download=false", "num_clients=4", "rounds=1",
        "local_epochs=1", "batch_size=5", "participation=1", "progress=false", "device=cpu",
    )
    summary = run(cfg, tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["round"].tolist() == [1] and metrics["active_clients"].tolist() == [4]
    assert summary["num_params"] == 797_962 and summary["status"] == "finished"


def test_unwritable_cache_folder_still_loads(tmp_path, monkeypatch):
    raw = vf.write_mnist(tmp_path, 20, 5)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "_atomic_write", refuse)
    d = vision.load_mnist(4, 0, root=str(tmp_path), download=False)
    assert d.y_train.tolist() == raw["y_train"].tolist()
    assert cache.load(tmp_path / "fedrun_cache" / "mnist.pt") is None
