"""The vectorised engine's fast explicit step: the same numbers as the general loop, bit for bit.

The fast path (:func:`fedrun.engines.steps.train_explicit`) runs :class:`ChainGrad` and the in-place
:func:`sgd_step_` over steps prepared ahead (:meth:`Plan.steps`, :func:`padded_schedule`). Each piece
is compared with the plain form it replaces, with ``torch.equal`` (exact), and the whole loop with
the general loop, which an objective with a pass-through :class:`LocalHook` takes. ``engine.compile``
(inductor fuses and reorders float32 work) is compared at a tolerance instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedrun.algorithms.base import LocalHook, LocalObjective
from fedrun.data import FederatedData
from fedrun.engines.base import LocalTraining, batch_schedule, padded_schedule, sgd_step, sgd_step_
from fedrun.engines.stacked import ChainGrad, batched_forward
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.models import MLP, LogisticRegression
from fedrun.models.params import FlatModel

CHAINS = {
    "logreg": (lambda: LogisticRegression((12,), 5), (12,), 5),
    "mlp": (lambda: MLP((12,), 4, hidden=(9, 7)), (12,), 4),
    # two linear layers in a row, a ReLU on the input and a Flatten of 2-d samples
    "odd_chain": (lambda: nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(12, 7), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)), (3, 4), 3),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_grad_equals_ce_grad_bit_for_bit(name: str) -> None:
    make, shape, classes = CHAINS[name]
    torch.manual_seed(0)
    model = FlatModel(make())
    chain = batched_forward(model.module)
    count, batch = 3, 6
    g = torch.Generator().manual_seed(1)
    w = torch.randn(count, model.num_params, generator=g) * 0.5
    buffer = w.clone()
    step = ChainGrad(chain, model, buffer, batch)
    for _ in range(3):  # the buffers are reused: a stale value would show on the second call
        x = torch.randn(count, batch, *shape, generator=g)
        y = torch.randint(0, classes, (count, batch), generator=g)
        weights = torch.full((count, batch), 1 / batch)
        weights[1, 4:], weights[1, :4] = 0.0, 0.25  # client 1 has a short batch: padding weighs 0
        want_ce, want_grad = chain.ce_grad(model, w, x, y, weights)
        buffer.copy_(w)
        neg_ce, grad = step(x, y.unsqueeze(-1), weights, weights.unsqueeze(-1))
        assert torch.equal(-neg_ce, want_ce) and torch.equal(grad, want_grad)
        w = w - 0.3 * want_grad  # move, so the next call sees other parameters


@pytest.mark.parametrize("clip", [0.0, 0.05, 1e3])
@pytest.mark.parametrize("tensor_decay", [True, False])
def test_in_place_sgd_step_equals_sgd_step(clip: float, tensor_decay: bool) -> None:
    g = torch.Generator().manual_seed(2)
    w, grad = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    decay = torch.rand(4, 1, generator=g) if tensor_decay else 0.01
    want = sgd_step(w, grad, 0.1, decay, clip)
    got = sgd_step_(w.clone(), grad.clone(), 0.1, decay, clip)
    assert torch.equal(got, want)
    if clip == 0.05:  # the clip is active: the step is clip/||grad|| of the plain one
        assert not torch.equal(want, sgd_step(w, grad, 0.1, decay, 0.0))


@pytest.mark.parametrize("n,epochs,batch,steps", [(23, 2, 5, None), (7, 1, 3, 5), (10, 1, 10, None), (11, 2, 10, 7), (1, 1, 1, 3), (0, 2, 3, None)])
def test_padded_schedule_is_batch_schedule_padded(n: int, epochs: int, batch: int, steps) -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    schedule = batch_schedule(n, epochs, batch, g1, steps)
    local, counts = padded_schedule(n, epochs, batch, g2, steps)
    assert local.shape == (len(schedule), batch) and counts.tolist() == [len(t) for t in schedule]
    for row, t in zip(local, schedule):
        assert torch.equal(row[: len(t)], t) and not row[len(t):].any()
    assert torch.equal(g1.get_state(), g2.get_state())  # the same random numbers were drawn


class PassThrough(LocalHook):
    """Takes ``grad_fn(w)``: the engine's general loop with the plain gradient."""


def _setting(name: str):
    make, shape, classes = CHAINS[name]
    torch.manual_seed(0)
    model = FlatModel(make())
    g = torch.Generator().manual_seed(4)
    n = 70
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    data = FederatedData("toy", x, y, x, y, classes)
    partition = [torch.arange(0, 23), torch.arange(23, 31), torch.arange(31, 70)]  # unequal: masked steps
    count, params = 3, model.num_params
    objective = LocalObjective(  # FedDyn/FedProx-like: a linear term, a proximal term, extra decay
        linear=torch.randn(count, params, generator=g) * 0.01, prox=torch.full((count,), 0.1),
        anchor=model.initial_vector(), decay=torch.full((count,), 0.01),
    )
    hp = LocalTraining(lr=0.1, epochs=2, batch_size=5, weight_decay=1e-3, clip_norm=1.0)
    return model, data, partition, objective, hp


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fast_loop_equals_general_loop_bit_for_bit(name: str) -> None:
    model, data, partition, objective, hp = _setting(name)
    theta, clients = model.initial_vector(), torch.arange(3)
    fast = VectorizedEngine().train(model, theta, data, partition, clients, objective, hp, 0, 1)
    hooked = LocalObjective(objective.linear, objective.prox, objective.anchor, objective.decay, hook=PassThrough())
    plain = VectorizedEngine().train(model, theta, data, partition, clients, hooked, hp, 0, 1)
    assert fast.steps.tolist() == [10, 4, 16]  # 2 epochs of ceil(n/5) batches
    assert torch.equal(fast.thetas, plain.thetas) and torch.equal(fast.loss, plain.loss)
    assert not torch.equal(fast.thetas[0], theta)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_compiled_step_matches_eager(name: str) -> None:
    """Inductor fuses the step's elementwise work and reorders its reductions, so the numbers are
    not bit for bit the eager ones; after a round of 16 steps they agree to float32 round-off
    (relative 1e-5 of the parameters' scale), and the recompile for a second client count works."""
    model, data, partition, objective, hp = _setting(name)
    theta = model.initial_vector()
    for clients in (torch.arange(3), torch.arange(2)):
        obj = objective.rows(slice(0, len(clients)))
        eager = VectorizedEngine().train(model, theta, data, partition, clients, obj, hp, 0, 1)
        fused = VectorizedEngine(compile=True).train(model, theta, data, partition, clients, obj, hp, 0, 1)
        scale = float(eager.thetas.abs().max())
        assert torch.allclose(fused.thetas, eager.thetas, rtol=1e-5, atol=1e-5 * scale)
        assert torch.allclose(fused.loss, eager.loss, rtol=1e-5, atol=1e-6)
        assert torch.equal(fused.steps, eager.steps)
