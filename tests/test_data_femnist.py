"""FEMNIST from LEAF's JSON (fedrun/data/femnist.py) on small files written here, and LEAF's CNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedrun.data.femnist import load_femnist
from fedrun.errors import FedrunError
from conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def leaf_file(path: Path, users: dict[str, tuple[int, int]]) -> None:
    """A LEAF JSON file: writer -> (samples, first label); sample i of a writer has all pixels
    (label + i) / 100 and label (first + i) % 62, so every value read can be checked."""
    data = {"users": list(users), "num_samples": [n for n, _ in users.values()], "user_data": {}}
    for u, (n, first) in users.items():
        data["user_data"][u] = {"x": [[(first + i) / 100] * 784 for i in range(n)], "y": [(first + i) % 62 for i in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    leaf_file(tmp_path / "train" / "a.json", {"f0001_00": (4, 0), "f0002_11": (3, 10)})
    leaf_file(tmp_path / "train" / "b.json", {"f0003_22": (5, 40)})
    leaf_file(tmp_path / "test" / "a.json", {"f0001_00": (1, 4), "f0002_11": (2, 13), "f0003_22": (1, 45)})
    return tmp_path


def test_reads_split_leaf_json(split_root: Path) -> None:
    """Three writers (4, 3, 5 training samples; 1, 2, 1 test), all chosen: 12 training images of
    1x28x28 whose pixels are label/100, groups by writer in name order, 4 test samples."""
    d = load_femnist(3, 0, root=str(split_root))
    assert d.x_train.shape == (12, 1, 28, 28) and d.num_classes == 62
    assert torch.bincount(d.groups).tolist() == [4, 3, 5]
    assert d.y_train.tolist() == [0, 1, 2, 3, 10, 11, 12, 40, 41, 42, 43, 44]
    torch.testing.assert_close(d.x_train[:, 0, 5, 7], d.y_train.float() / 100)
    assert sorted(d.y_test.tolist()) == [4, 13, 14, 45]
    assert d.info["writers"] == ["f0001_00", "f0002_11", "f0003_22"]


def test_chooses_writers_and_min_samples(split_root: Path) -> None:
    two = load_femnist(2, 0, root=str(split_root))
    assert len(two.info["writers"]) == 2 and int(two.groups.max()) == 1
    assert load_femnist(1, 0, root=str(split_root), min_samples=5).info["writers"] == ["f0003_22"]
    with pytest.raises(FedrunError, match="num_clients=1"):
        load_femnist(2, 0, root=str(split_root), min_samples=5)


def test_all_data_is_split_per_writer(tmp_path: Path) -> None:
    """all_data/: each writer of n samples keeps floor(0.9 n) (at least 1, at most n-1) for training."""
    leaf_file(tmp_path / "all_data" / "x.json", {"w1": (10, 0), "w2": (2, 20), "w3": (1, 30)})  # w3: too few to split
    d = load_femnist(2, 0, root=str(tmp_path))
    assert torch.bincount(d.groups).tolist() == [9, 1] and len(d.y_test) == 2
    assert set(d.y_train.tolist()) | set(d.y_test.tolist()) == set(range(10)) | {20, 21}


def test_errors_name_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(FedrunError, match="preprocess.sh"):
        load_femnist(2, 0, root=str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "t.json").write_text('{"users": ["a"')
    (tmp_path / "test" / "t.json").write_text("{}")
    with pytest.raises(FedrunError, match="not whole LEAF JSON"):
        load_femnist(1, 0, root=str(tmp_path))


def test_cnn_femnist_is_leafs_cnn() -> None:
    """conv 1->32 (832) + conv 32->64 (51,264) + FC 3136->2048 (6,424,576) + 2048->62 (127,038) = 6,603,710;
    'same' padding keeps 28 -> 14 -> 7."""
    from fedrun.config.schema import build_object

    model = build_object(compose_config("model=cnn_femnist").model, input_shape=(1, 28, 28), num_classes=62)
    assert sum(p.numel() for p in model.parameters()) == 6_603_710
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 62)


def test_data_femnist_runs_a_round(split_root: Path, tmp_path: Path) -> None:
    """data=femnist brings model=cnn_femnist and partition=natural; one round on the three writers."""
    from fedrun.runner import run

    cfg = compose_config("data=femnist", f"data.root={split_root}", "num_clients=3", "participation=1.0", "rounds=1",
                         "progress=false", "algo=fedavg")
    assert cfg.model.padding == 2 and cfg.partition._target_.endswith("natural")
    assert run(cfg, tmp_path / "run")["status"] == "finished"
