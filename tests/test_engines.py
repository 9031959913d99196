"""The vectorised engine equals the sequential reference: every algorithm, uneven clients, chunks."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from fedrun.algorithms.base import LocalObjective
from fedrun.config.schema import CONF_DIR
from fedrun.data import FederatedData
from fedrun.engines.base import LocalTraining
from fedrun.engines.sequential import SequentialEngine
from fedrun.engines.stacked import LayerChain
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.errors import FedrunError
from fedrun.models import MLP, CNN, CharLSTM, LogisticRegression
from fedrun.models.params import FlatModel
from conftest import build
from fedrun.simulation.round import run_round
from conftest import compose_config


ALGOS = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))
# Small, stable settings: with a large lr local SGD on the synthetic data is chaotic enough that
# float32 rounding differences (summation order) grow over hundreds of steps.
SMALL = [
    "num_clients=8", "participation=0.5", "sampling=fixed", "data.mean_samples=30",
    "local_epochs=2", "batch_size=8", "lr=0.02", "progress=false", "eval_all=true",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_rounds(overrides: list[str], rounds: int = 3):
    exp = build(compose_config(*overrides))
    exp.initial = exp.theta.clone()
    for r in range(1, rounds + 1):
        run_round(exp, r)
    return exp


@pytest.mark.parametrize("partition", ["iid", "unbalanced"])
@pytest.mark.parametrize("algo", ALGOS)
def test_engines_agree_after_three_rounds(algo: str, partition: str) -> None:
    base = SMALL + [f"algo={algo}", f"partition={partition}"]
    seq = run_rounds(base + ["engine=sequential"])
    vec = run_rounds(base + ["engine=vectorized"])
    torch.testing.assert_close(vec.initial, seq.initial, rtol=0, atol=0)
    assert not torch.allclose(seq.theta, seq.initial, atol=1e-3), "training must move the model"
    torch.testing.assert_close(vec.theta, seq.theta, rtol=1e-4, atol=1e-5)
    for name, table in seq.store.items():
        torch.testing.assert_close(vec.store.tables[name], table, rtol=1e-4, atol=1e-5)


def test_default_engine_is_vectorized() -> None:
    assert compose_config().engine._target_.endswith("VectorizedEngine")


@pytest.mark.slow
def test_compiled_stacked_forward_agrees_with_eager() -> None:
    """``engine.compile=true`` (torch.compile of the stacked forward; ``gradient=batched`` so the MLP's
    gradient comes from autograd through that forward) trains to the eager engine's models after two
    rounds, up to float32 reordering."""
    base = ["model=mlp", "engine.gradient=batched", "num_clients=4", "participation=1.0", "sampling=fixed",
            "data.mean_samples=12", "local_epochs=1", "batch_size=6", "lr=0.05", "algo=fedavg"]
    eager = run_rounds(base, rounds=2)
    compiled = run_rounds(base + ["engine.compile=true"], rounds=2)
    assert not torch.allclose(eager.theta, eager.initial, atol=1e-4), "training must move the model"
    torch.testing.assert_close(compiled.theta, eager.theta, rtol=1e-4, atol=1e-5)


# ---- engine level: hand-built clients ---------------------------------------------------------


def toy(sizes: list[int], dim: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    data = FederatedData("toy", x, y, x, y, classes)
    partition = list(torch.randperm(n, generator=g).split(sizes))
    return data, partition


def objective_for(theta: torch.Tensor, count: int, steps=None) -> LocalObjective:
    g = torch.Generator().manual_seed(1)
    return LocalObjective(
        linear=torch.randn(count, theta.numel(), generator=g) * 0.05,
        prox=torch.rand(count, generator=g),
        anchor=theta.clone(),
        decay=torch.rand(count, generator=g) * 0.01,
        steps=steps,
    )


def both(model, theta, data, partition, objective, hp, **engine):
    clients = torch.arange(len(partition))
    seq = SequentialEngine().train(model, theta, data, partition, clients, objective, hp, 3, 2)
    vec = VectorizedEngine(**engine).train(model, theta, data, partition, clients, objective, hp, 3, 2)
    return seq, vec


@pytest.mark.parametrize("gradient", ["auto", "batched", "vmap"])
def test_uneven_clients_are_masked(gradient: str) -> None:
    sizes = [1, 5, 13, 40]  # 1, 1, 2, 5 batches of 8: clients run out of steps at different times
    data, partition = toy(sizes)
    model = FlatModel(MLP((6,), 3, hidden=(7,)))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.1, epochs=2, batch_size=8, weight_decay=1e-3, clip_norm=0.5)
    seq, vec = both(model, theta, data, partition, objective_for(theta, 4), hp, gradient=gradient)
    assert vec.steps.tolist() == [2 * math.ceil(n / 8) for n in sizes] == seq.steps.tolist()
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vec.loss, seq.loss, rtol=1e-5, atol=1e-6)


def test_fixed_step_counts_scaffold_style() -> None:
    data, partition = toy([3, 20, 9])
    model = FlatModel(LogisticRegression((6,), 3, zero_init=False))
    theta = model.initial_vector()
    steps = torch.tensor([7, 1, 4])  # more passes than the data for client 0, fewer for client 1
    hp = LocalTraining(lr=0.05, epochs=1, batch_size=4, weight_decay=0.0, clip_norm=0.0)
    seq, vec = both(model, theta, data, partition, objective_for(theta, 3, steps), hp)
    assert vec.steps.tolist() == [7, 1, 4]
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)


def test_chunked_equals_unchunked() -> None:
    data, partition = toy([11, 30, 4, 17, 25])
    model = FlatModel(MLP((6,), 3, hidden=(5,)))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.1, epochs=2, batch_size=5, weight_decay=1e-4, clip_norm=1.0)
    obj = objective_for(theta, 5)
    clients = torch.arange(5)
    whole = VectorizedEngine().train(model, theta, data, partition, clients, obj, hp, 0, 1)
    for chunk in (1, 2, 3):
        part = VectorizedEngine(chunk_size=chunk).train(model, theta, data, partition, clients, obj, hp, 0, 1)
        torch.testing.assert_close(part.thetas, whole.thetas, rtol=1e-6, atol=1e-7)
        assert torch.equal(part.steps, whole.steps)


def test_per_client_augmentation_uses_each_clients_generator() -> None:
    data, partition = toy([9, 16, 4])
    data.augment = lambda x, g: x + 0.3 * torch.randn(x.shape, generator=g)
    model = FlatModel(LogisticRegression((6,), 3, zero_init=False))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.1, epochs=2, batch_size=4, weight_decay=0.0, clip_norm=0.0)
    seq, vec = both(model, theta, data, partition, LocalObjective(), hp)
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)
    data.augment = None  # without augmentation the models differ: the noise was really applied
    plain = VectorizedEngine().train(model, theta, data, partition, torch.arange(3), LocalObjective(), hp, 3, 2)
    assert not torch.allclose(plain.thetas, vec.thetas)


@pytest.mark.parametrize("gradient", ["vmap", "batched"])
def test_cnn_vectorised_matches_sequential(gradient: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 10, 10, generator=g)
    y = torch.randint(0, 4, (24,), generator=g)
    from fedrun.data.augment import FlipCrop

    data = FederatedData("img", x, y, x, y, 4, augment=FlipCrop(pad=1))  # per-client flips and crops too
    partition = list(torch.arange(24).split([5, 12, 7]))
    model = FlatModel(CNN((1, 10, 10), 4, channels=(3,), hidden=(8,), kernel_size=3))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.05, epochs=1, batch_size=4, weight_decay=1e-5, clip_norm=10.0)
    seq, vec = both(model, theta, data, partition, objective_for(theta, 3), hp, gradient=gradient)
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)
    forward = VectorizedEngine(gradient=gradient).forward_for(model, data)
    assert isinstance(forward, LayerChain) == (gradient == "batched")  # batched: one grouped convolution
    auto = VectorizedEngine()  # auto on CPU: one client at a time in this engine, measured faster
    assert auto.forward_for(model, data) is not None and auto.chunk_for(model, 3, 4, torch.device("cpu")) == 1


def test_lstm_falls_back_to_sequential_and_vmap_agrees(caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 12, (20, 6), generator=g)
    y = torch.randint(0, 12, (20,), generator=g)
    data = FederatedData("chars", x, y, x, y, 12)
    partition = list(torch.arange(20).split([8, 12]))
    model = FlatModel(CharLSTM((6,), 12, vocab_size=12, embed_dim=4, hidden_size=5))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.5, epochs=1, batch_size=4, weight_decay=0.0, clip_norm=10.0)
    engine = VectorizedEngine()
    with caplog.at_level(logging.INFO, logger="fedrun"):
        seq, auto = both(model, theta, data, partition, LocalObjective(), hp)
        assert engine.forward_for(model, data) is None  # automatic fallback, no user action
    assert sum("sequential engine" in r.getMessage() for r in caplog.records) <= 1  # logged once
    torch.testing.assert_close(auto.thetas, seq.thetas)
    _, forced = both(model, theta, data, partition, LocalObjective(), hp, gradient="vmap")
    torch.testing.assert_close(forced.thetas, seq.thetas, rtol=1e-5, atol=1e-6)


def test_plain_torch_lstm_without_batching_rule_falls_back() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.lstm, self.fc = nn.Embedding(12, 4), nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.lstm(self.embed(x))[0][:, -1])

    x = torch.randint(0, 12, (10, 6))
    data = FederatedData("chars", x, x[:, 0], x, x[:, 0], 12)
    assert VectorizedEngine(gradient="vmap").forward_for(FlatModel(Plain()), data) is None


def test_bad_engine_settings_are_one_sentence() -> None:
    with pytest.raises(FedrunError, match="engine.chunk_size"):
        VectorizedEngine(chunk_size=-1)
    with pytest.raises(FedrunError, match="engine.gradient"):
        VectorizedEngine(gradient="fast")
    data, _ = toy([4])
    tanh = FlatModel(nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)))  # Tanh: not a layer chain
    with pytest.raises(FedrunError, match="engine.gradient=auto"):
        VectorizedEngine(gradient="batched").forward_for(tanh, data)


def test_flip_crop_augmentation_batched_over_clients_matches_sequential() -> None:
    from fedrun.data.augment import FlipCrop

    g = torch.Generator().manual_seed(0)
    x = torch.randn(22, 2, 8, 8, generator=g)
    y = torch.randint(0, 3, (22,), generator=g)
    data = FederatedData("img", x, y, x, y, 3, augment=FlipCrop(pad=2))
    partition = list(torch.arange(22).split([3, 12, 7]))  # uneven: padded samples in most steps
    model = FlatModel(MLP((2, 8, 8), 3, hidden=(6,)))
    theta = model.initial_vector()
    hp = LocalTraining(lr=0.1, epochs=2, batch_size=5, weight_decay=0.0, clip_norm=0.0)
    seq, vec = both(model, theta, data, partition, LocalObjective(), hp)
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)
    data.augment = None  # without augmentation the models differ: flips and crops were really applied
    plain = VectorizedEngine().train(model, theta, data, partition, torch.arange(3), LocalObjective(), hp, 3, 2)
    assert not torch.allclose(plain.thetas, vec.thetas)
