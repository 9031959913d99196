"""The local-gradient hook (LocalHook) and the SAM helper, in both engines.

* SAM with ρ = 0 is plain SGD bit for bit: the ascent is ρ·g/(‖g‖+ε) = 0, so the second gradient is
  taken at w itself.
* One SAM step on the quadratic f(w) = ½ wᵀ A w, A = diag(1, 4), by hand: at w = (3, 1),
  g = A w = (3, 4), ‖g‖ = 5, e = ρ g/‖g‖ = 0.5·(0.6, 0.8) = (0.3, 0.4), w + e = (3.3, 1.4),
  ∇f(w + e) = (3.3, 5.6), and with lr 0.1 the step gives w' = (3 − 0.33, 1 − 0.56) = (2.67, 0.44).
  A second client at w = (0, 1): g = (0, 4), e = (0, 0.5), ∇f(w + e) = (0, 6): the norm is per client.
* The vectorised engine calls the hook once per step for all clients of a chunk, marks padded
  clients as inactive, and the hook's per-client state (rows of the round's active clients) ends
  where the sequential engine leaves it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import pytest
import torch

from fedrun.algorithms.base import LocalHook, LocalObjective
from fedrun.algorithms.sam import SAM, sam_gradient
from fedrun.engines.base import LocalTraining, sgd_step
from fedrun.engines.sequential import SequentialEngine
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.models import MLP, LogisticRegression
from fedrun.models.params import FlatModel
from tests.test_engines import objective_for, toy

HP = LocalTraining(lr=0.1, epochs=2, batch_size=8, weight_decay=1e-3, clip_norm=0.5)
SIZES = [1, 5, 13, 40]  # uneven: clients run out of steps at different times


def train(engine, model, objective, data, partition, hp=HP):
    theta = model.initial_vector()
    return engine.train(model, theta, data, partition, torch.arange(len(partition)), objective, hp, 3, 2)


ENGINES = [SequentialEngine(), VectorizedEngine(), VectorizedEngine(gradient="vmap"), VectorizedEngine(chunk_size=3)]


@pytest.mark.parametrize("engine", ENGINES, ids=["sequential", "vectorized", "vmap", "chunked"])
def test_sam_rho0_is_plain_sgd_exactly(engine):
    data, partition = toy(SIZES)
    model = FlatModel(MLP((6,), 3, hidden=(7,)))
    objective = objective_for(model.initial_vector(), len(SIZES))
    plain = train(engine, model, objective, data, partition)
    sam = train(engine, model, replace(objective, hook=SAM(0.0)), data, partition)
    assert torch.equal(sam.thetas, plain.thetas) and torch.equal(sam.loss, plain.loss)
    moved = train(engine, model, replace(objective, hook=SAM(0.05)), data, partition)
    assert not torch.allclose(moved.thetas, plain.thetas), "rho > 0 changes the steps"


def test_sam_engines_agree():
    data, partition = toy(SIZES)
    model = FlatModel(MLP((6,), 3, hidden=(7,)))
    objective = replace(objective_for(model.initial_vector(), len(SIZES)), hook=SAM(0.05))
    seq = train(SequentialEngine(), model, objective, data, partition)
    for engine in (VectorizedEngine(), VectorizedEngine(gradient="vmap"), VectorizedEngine(chunk_size=3)):
        vec = train(engine, model, objective, data, partition)
        torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vec.loss, seq.loss, rtol=1e-5, atol=1e-6)


def test_sam_step_on_a_quadratic_by_hand():
    a = torch.tensor([1.0, 4.0])

    def grad_fn(w, extra=True):  # f(w) = 1/2 w^T diag(a) w per client
        return 0.5 * (a * w * w).sum(-1), a * w

    w = torch.tensor([[3.0, 1.0], [0.0, 1.0]])
    loss, grad = sam_gradient(grad_fn, w, rho=0.5)
    torch.testing.assert_close(grad, torch.tensor([[3.3, 5.6], [0.0, 6.0]]))
    torch.testing.assert_close(loss, torch.tensor([6.5, 2.0]))  # the loss at w, not at w + e
    new = sgd_step(w, grad, lr=0.1, decay=0.0, clip_norm=0.0)
    torch.testing.assert_close(new, torch.tensor([[2.67, 0.44], [0.0, 0.4]]))


class CountingHook(LocalHook):
    """Counts each active client's real steps in a per-client row, like a method's state inside the step."""

    def __init__(self, count: int, P: int):
        self.counts = torch.zeros(count, P)
        self.calls = 0

    def gradient(self, grad_fn, w, objective: LocalObjective, active: Optional[torch.Tensor]):
        self.calls += 1
        add = torch.ones(w.shape[0], 1) if active is None else active.float()
        self.counts[objective.hook_rows] += add
        return grad_fn(w)

    def result(self):
        return {"counts": self.counts}


@pytest.mark.parametrize("engine", ENGINES, ids=["sequential", "vectorized", "vmap", "chunked"])
def test_hook_state_rows_and_active_mask(engine):
    data, partition = toy(SIZES)
    model = FlatModel(LogisticRegression((6,), 3, zero_init=False))
    P = model.num_params
    hook = CountingHook(len(SIZES), P)
    plain = train(engine, model, LocalObjective(), data, partition)
    out = train(engine, model, LocalObjective(hook=hook), data, partition)
    assert torch.equal(out.thetas, plain.thetas)
    assert hook.result()["counts"][:, 0].tolist() == out.steps.float().tolist() == [2, 2, 4, 10]
    if isinstance(engine, VectorizedEngine) and engine.chunk_size == 0:
        assert hook.calls == 10  # one call per step for all clients at once
