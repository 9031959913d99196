"""Every ``conf/experiment/*.yaml`` composes with every value of its sweep grid, and runs (slow: one
small round of each, on small files in the real on-disk formats and the shared Shakespeare texts)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import vision_files as vf
from conftest import compose_config
from fedrun.config.schema import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PAPER = [name for name in EXPERIMENTS if name.startswith("paper_")]  # the FedDyn paper's grids
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"


@pytest.mark.parametrize("name", PAPER)
def test_paper_experiment_composes_with_every_value_of_its_grid(name: str) -> None:
    base = compose_config(f"experiment={name}", hydra=True)
    grid = base.hydra.sweeper.params
    assert {"algo", "participation", "seed"} <= set(grid)  # the paper's grid (conf/experiment/paper/grid.yaml)
    axes = {key: str(values).split(",") for key, values in grid.items()}
    for i in range(max(len(v) for v in axes.values())):  # every value of every axis appears in some compose
        cfg = compose_config(f"experiment={name}", *(f"{k}={v[i % len(v)]}" for k, v in axes.items()))
        assert cfg.skip_finished is True and cfg.sampling == "bernoulli"
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(base)  # as Hydra does before a run: ${hydra:...} resolves
    data = base.hydra.runtime.choices.data
    assert name == f"paper_{data}" and base.hydra.sweep.dir == f"outputs/paper/runs/{data}"
    if name != "paper_synthetic":
        assert base.num_clients == 100  # the paper's 100 devices
    if name == "paper_cifar10":  # docs/paper.md's reference setting
        assert (base.local_epochs, base.batch_size, base.lr, base.weight_decay) == (5, 50, 0.1, 1e-3)
        assert list(base.targets) == [0.814, 0.85]


def small_data(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Overrides that point experiment ``name`` at small local data."""
    if name in ("paper_synthetic", "fednova_authors"):  # the synthetic data (fednova_authors sets no dataset)
        return []
    name = {"fl_simulator_cifar10": "paper_cifar10"}.get(name, name)  # the same data
    if name == "paper_shakespeare":
        if not SHAKESPEARE.is_dir():
            pytest.skip(f"{SHAKESPEARE} is not there")
        return [f"data.root={SHAKESPEARE}", "data.train_per_client=100", "data.test_per_client=40", "num_clients=5"]
    writers = {
        "paper_mnist": lambda: vf.write_mnist(root, 40, 10),
        "paper_emnist_l": lambda: vf.write_emnist_letters(root, 40, 10),
        "paper_cifar10": lambda: vf.write_cifar10(root, 8, 10),
        "paper_cifar100": lambda: vf.write_cifar100(root, 40, 10),
    }
    writers[name]()
    import torchvision.datasets as tvd

    for cls in (tvd.CIFAR10, tvd.CIFAR100):  # restored after the test
        for attr in ("train_list", "test_list", "meta"):
            monkeypatch.setattr(cls, attr, getattr(cls, attr))
    vf.accept_any_cifar()
    return [f"data.root={root}", "data.download=false", "num_clients=4"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_a_round(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrun.runner import run

    cfg = compose_config(f"experiment={name}", *small_data(name, tmp_path / "data", monkeypatch), "rounds=1", "local_epochs=1",
                         "device=cpu", "progress=false")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["rounds_done"] == 1
    assert math.isfinite(summary["final_test_loss"])
