"""Client-state placements (device, pinned, mmap) hold the same numbers; auto placement by size."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedrun.state import memory
from conftest import compose_config
from fedrun.errors import FedrunError
from fedrun.models import CNN
from fedrun.models.params import FlatModel
from conftest import build
from fedrun.simulation.round import run_round
from fedrun.state.store import MmapStore, TensorStore, store_for_run


GiB = 1024**3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


STORES = {
    "device": lambda d: TensorStore(6, 4, torch.device("cpu")),
    "pinned": lambda d: TensorStore(6, 4, torch.device("cpu"), pinned=True),
    "mmap scratch": lambda d: MmapStore(6, 4, torch.device("cpu")),
    "mmap durable": lambda d: MmapStore(6, 4, torch.device("cpu"), d),
}


@pytest.mark.parametrize("kind", STORES)
def test_rows_round_trip(kind: str, tmp_path) -> None:
    store = STORES[kind](tmp_path / "s")
    store.add("a")
    store.add("b", init=torch.arange(4.0))
    ids = torch.tensor([4, 1])
    rows = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    store.set("a", ids, rows)
    assert torch.equal(store.get("a", torch.tensor([1, 4])), rows.flip(0))
    assert torch.equal(store.get("a", torch.tensor([0])), torch.zeros(1, 4))
    assert torch.equal(store.get("b", torch.tensor([5])), torch.arange(4.0)[None])


def test_scratch_mmap_tables_live_in_files_and_are_removed() -> None:
    store = MmapStore(5, 3, torch.device("cpu"))
    store.add("g")
    store.set("g", torch.tensor([2]), torch.tensor([[1.5, -2.0, 3.0]]))
    path = store.paths["g"]
    assert path.parent == store.directory and path.stat().st_size == 5 * 3 * 4
    on_disk = np.fromfile(path, dtype=np.float32).reshape(5, 3)  # written through to the file
    assert on_disk[2].tolist() == [1.5, -2.0, 3.0] and not on_disk[[0, 1, 3, 4]].any()
    del store
    gc.collect()
    assert not path.exists()


def run_three_rounds(placement: str, tmp_path):
    cfg = compose_config(
        "algo=feddyn", "num_clients=6", "participation=0.5", "data.mean_samples=20", "local_epochs=1",
        "lr=0.05", "progress=false", f"state_placement={placement}", "engine=vectorized",
    )
    exp = build(cfg, state_dir=tmp_path / placement)
    assert exp.store.placement == placement
    for r in range(1, 4):
        run_round(exp, r)
    return exp


def test_three_placements_give_identical_runs(tmp_path) -> None:
    runs = {p: run_three_rounds(p, tmp_path) for p in ("device", "pinned", "mmap")}
    ref = runs["device"]
    assert any(bool(t.abs().sum() > 0) for _, t in ref.store.items()), "the state must have been written"
    for placement in ("pinned", "mmap"):
        exp = runs[placement]
        assert torch.equal(exp.theta, ref.theta)
        for name, table in ref.store.items():
            assert torch.equal(exp.store.tables[name], table)
    mm = runs["mmap"].store
    assert mm.paths and all(p.parent == tmp_path / "mmap" and p.exists() for p in mm.paths.values())


# ---- automatic placement ----------------------------------------------------------------------

CIFAR_PARAMS = 797_962


def test_cifar_cnn_has_the_params_the_estimate_assumes() -> None:
    assert FlatModel(CNN((3, 32, 32), 10)).num_params == CIFAR_PARAMS


def test_feddyn_10k_cifar_clients_go_to_mmap_on_a_24_gib_machine() -> None:
    state = memory.state_bytes(10_000, CIFAR_PARAMS, 1)
    assert state == 10_000 * CIFAR_PARAMS * 4  # 31.9 GB per table
    cpu_box = memory.Budget(device=22 * GiB, host=22 * GiB, disk=200 * GiB, device_is_host=True)
    assert memory.choose_placement("auto", state, 1 * GiB, cpu_box) == "mmap"
    big_box = memory.Budget(device=200 * GiB, host=200 * GiB, disk=200 * GiB, device_is_host=True)
    assert memory.choose_placement("auto", state, 1 * GiB, big_box) == "device"
    h100 = memory.Budget(device=78 * GiB, host=120 * GiB, disk=400 * GiB, device_is_host=False)
    # 3 tables = 89.2 GiB: more than 0.8 * 78 - 2 = 60.4 GiB of GPU, less than 0.8 * 120 GiB of host
    assert memory.choose_placement("auto", 3 * state, 2 * GiB, h100) == "pinned"
    assert memory.choose_placement("auto", 5 * state, 2 * GiB, h100) == "mmap"  # 149 GiB > 96 GiB host, < disk
    assert memory.choose_placement("auto", state, 2 * GiB, h100) == "device"


def test_requested_placement_that_cannot_fit_names_the_setting() -> None:
    state = memory.state_bytes(10_000, CIFAR_PARAMS, 2)
    cpu_box = memory.Budget(device=22 * GiB, host=22 * GiB, disk=200 * GiB, device_is_host=True)
    with pytest.raises(FedrunError, match=r"state_placement=device needs .* use state_placement=mmap"):
        memory.choose_placement("device", state, 0, cpu_box)
    tiny = memory.Budget(device=1 * GiB, host=1 * GiB, disk=1 * GiB, device_is_host=True)
    with pytest.raises(FedrunError, match="num_clients"):
        memory.choose_placement("auto", state, 0, tiny)


def test_store_for_run_picks_mmap_for_feddyn_10k_cifar(monkeypatch, tmp_path) -> None:
    box = memory.Budget(device=22 * GiB, host=22 * GiB, disk=500 * GiB, device_is_host=True)
    monkeypatch.setattr(memory, "current_budget", lambda device, directory: box)
    model = FlatModel(CNN((3, 32, 32), 10))
    data = SimpleNamespace(x_train=torch.zeros(2, 3, 32, 32))
    store = store_for_run("auto", 10_000, 0.1, 50, 1, data, model, torch.device("cpu"), tmp_path)
    assert isinstance(store, MmapStore) and store.durable  # allocated lazily: nothing of 32 GB is written here
    assert type(store_for_run("auto", 100, 0.1, 50, 1, data, model, torch.device("cpu"), tmp_path)) is TensorStore


def test_chunk_size_that_cannot_fit_names_a_size_that_does() -> None:
    per_client = 100 * 1024**2
    assert memory.auto_chunk_size(50, per_client, 1 * GiB) == 8  # 0.8 GiB / 100 MiB
    assert memory.auto_chunk_size(5, per_client, 1 * GiB) == 5
    with pytest.raises(FedrunError, match=r"use engine.chunk_size=8 "):
        memory.check_chunk_fits(20, 50, per_client, 1 * GiB, torch.device("cpu"))
    memory.check_chunk_fits(8, 50, per_client, 1 * GiB, torch.device("cpu"))  # fits: no error


def test_activation_estimate_counts_leaf_outputs() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    # input 10 + outputs 7 + 7 + 3 floats
    assert memory.activation_bytes_per_sample(model, torch.zeros(1, 10)) == 4 * (10 + 7 + 7 + 3)


def test_dataset_too_big_for_the_gpu_names_device_cpu(monkeypatch) -> None:
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1 * GiB)
    data = SimpleNamespace(x_train=torch.zeros(2, 3), y_train=torch.zeros(2), x_test=None, y_test=None, groups=None)
    monkeypatch.setattr(memory, "data_bytes", lambda d: 5 * GiB)
    with pytest.raises(FedrunError, match="device=cpu"):
        memory.check_data_fits(data, torch.device("cuda"))
    memory.check_data_fits(data, torch.device("cpu"))  # host data is already in memory: no check
