"""FedAvg and the shared local training against answers derived independently."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from fedrun.algorithms.base import LocalObjective
from fedrun.engines.base import LocalTraining, batch_schedule, client_generators
from fedrun.engines.sequential import SequentialEngine
from fedrun.models.params import FlatModel
from conftest import build
from fedrun.simulation.round import run_round
from conftest import compose_config


def test_one_full_batch_step_of_all_clients_is_one_centralised_step():
    """All clients, one full-batch local step, no clip, no decay: the n_k-weighted mean of
    θ - lr ∇L_k(θ) is θ - lr Σ_k (n_k/N) ∇L_k(θ) = θ - lr ∇L(θ) on the pooled data (mean CE)."""
    cfg = compose_config(
        "algo=fedavg", "num_clients=6", "participation=1.0", "local_epochs=1", "batch_size=100000",
        "weight_decay=0", "clip_norm=0", "lr=0.5", "data.sigma=0.8", "data.mean_samples=40", "model.zero_init=false",
    )
    exp = build(cfg)
    sizes = [len(p) for p in exp.partition]
    assert len(set(sizes)) > 1, "unequal client sizes make the weighting matter"
    theta0 = exp.theta.clone().requires_grad_(True)
    x = exp.data.x_train[torch.cat(list(exp.partition))]
    y = exp.data.y_train[torch.cat(list(exp.partition))]
    (grad,) = torch.autograd.grad(F.cross_entropy(exp.model(theta0, x), y), theta0)
    expected = theta0.detach() - 0.5 * grad
    run_round(exp, 1)
    torch.testing.assert_close(exp.theta, expected, rtol=1e-5, atol=1e-6)


def test_weighted_mean_uses_client_sizes():
    cfg = compose_config("algo=fedavg", "num_clients=3", "participation=1.0", "data.sigma=1.0", "data.mean_samples=30")
    exp = build(cfg)
    thetas = torch.stack([torch.full((exp.model.num_params,), float(k)) for k in range(3)])
    from fedrun.simulation.rounds import open_round

    rnd = open_round(exp.algorithm, exp.ctx, exp.const, exp.store, 1, 0.1, 0.1, exp.theta, torch.arange(3))
    new_theta, _ = exp.algorithm.server_update(rnd, exp.server, thetas, {})
    n = torch.tensor([len(p) for p in exp.partition], dtype=torch.float64)
    assert torch.allclose(new_theta.double(), torch.full_like(new_theta.double(), float((n * torch.arange(3)).sum() / n.sum())))


def test_local_steps_match_torch_sgd_with_clip_and_weight_decay():
    """The engine's steps equal torch.optim.SGD(weight_decay) after clip_grad_norm_ on an nn.Module,
    with the same batches: the reference code's local training."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    model = FlatModel(copy.deepcopy(module))
    x = 3 * torch.randn(23, 5)
    y = torch.randint(0, 3, (23,))

    class Data:
        x_train, y_train, augment = x, y, None

    hp = LocalTraining(lr=0.3, epochs=2, batch_size=5, weight_decay=0.01, clip_norm=0.5)
    theta = model.initial_vector()
    result = SequentialEngine().train(model, theta, Data, [torch.arange(23)], torch.tensor([0]), LocalObjective(), hp, seed=4, round_idx=2)

    opt = torch.optim.SGD(module.parameters(), lr=0.3, weight_decay=0.01)
    g_batch, _ = client_generators(4, 2, 0)
    schedule = batch_schedule(23, 2, 5, g_batch)
    assert len(schedule) == 10 and [len(b) for b in schedule[:5]] == [5, 5, 5, 5, 3]
    losses = []
    for idx in schedule:
        opt.zero_grad()
        loss = F.cross_entropy(module(x[idx]), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
    expected = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    torch.testing.assert_close(result.thetas[0], expected, rtol=1e-5, atol=1e-6)
    assert abs(result.loss[0].item() - sum(losses) / len(losses)) < 1e-5
    assert int(result.steps[0]) == 10


def test_fixed_steps_loop_over_the_data():
    g = torch.Generator().manual_seed(0)
    schedule = batch_schedule(7, 1, 3, g, steps=5)
    assert [len(b) for b in schedule] == [3, 3, 1, 3, 3]
    assert sorted(torch.cat(schedule[:3]).tolist()) == list(range(7))
