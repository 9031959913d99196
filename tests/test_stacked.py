"""The hand-batched layer chain: A clients' models at once, equal to each client's own module.

Convolutions run as one grouped convolution over the clients' channels side by side; the test
compares outputs and per-client gradients with the module run one client at a time, for chains with
strides, padding and pooling windows that are not the CIFAR CNN's, so a wrong reshape cannot hide.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedrun.engines.stacked import LayerChain, agrees, batched_forward, unflatten_stacked
from fedrun.models import CNN
from fedrun.models.params import FlatModel


def _per_client(model: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outs, grads = [], []
    for a in range(w.shape[0]):
        wa = w[a].detach().requires_grad_(True)
        out = model(wa, x[a])
        (g,) = torch.autograd.grad(F.cross_entropy(out, y[a]), wa)
        outs.append(out.detach())
        grads.append(g)
    return torch.stack(outs), torch.stack(grads)


def _stacked(model: FlatModel, chain: LayerChain, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.detach().requires_grad_(True)
    out = chain(unflatten_stacked(model, w), x)
    loss = sum(F.cross_entropy(out[a], y[a]) for a in range(w.shape[0]))  # clients independent: row a is a's gradient
    (g,) = torch.autograd.grad(loss, w)
    return out.detach(), g


MODULES = {
    "cifar_cnn": lambda: CNN((3, 12, 12), 5, channels=(4, 6), hidden=(7,), kernel_size=3),
    "strided_padded": lambda: nn.Sequential(
        nn.Conv2d(2, 5, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1),
        nn.Conv2d(5, 3, (2, 3), padding=(1, 0)), nn.Flatten(), nn.Linear(3 * 4 * 1, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layer_chain_equals_each_clients_module(name: str) -> None:
    torch.manual_seed(0)
    model = FlatModel(MODULES[name]())
    chain = batched_forward(model.module)
    assert isinstance(chain, LayerChain) and chain.has_conv and not chain.explicit
    channels = 3 if name == "cifar_cnn" else 2
    side = 12 if name == "cifar_cnn" else 10
    count, batch = 3, 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(count, batch, channels, side, side, generator=g)
    w = torch.randn(count, model.num_params, generator=g) * 0.3  # three different models
    y = torch.randint(0, 4, (count, batch), generator=g)
    want_out, want_grad = _per_client(model, w, x, y)
    got_out, got_grad = _stacked(model, chain, w, x, y)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert agrees(model, chain, x[0])


def test_layer_chain_refuses_layers_it_does_not_know() -> None:
    assert batched_forward(nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(2, 3))) is None
    assert batched_forward(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 3))) is None
    assert batched_forward(nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(2, 3))) is None
    assert batched_forward(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(2, 3))) is None


def test_explicit_backward_only_without_convolutions() -> None:
    chain = batched_forward(CNN((1, 8, 8), 3, channels=(2,), hidden=(4,), kernel_size=3))
    with pytest.raises(ValueError):
        chain.ce_grad(None, torch.zeros(1, 1), torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))


@pytest.mark.parametrize("hidden", [(200, 200), (100, 100)], ids=["mnist_mlp", "emnist_mlp"])
def test_hand_written_backward_equals_autograd_for_the_papers_mlps(hidden: tuple[int, int]) -> None:
    """``ce_grad`` (softmax minus one-hot, then batched matmuls back through Linear/ReLU) against
    autograd of ``sum_b weights[a, b] * CE_b`` per client, in float32, for the paper's 784-200-200-10
    (MNIST) and 784-100-100-10 (EMNIST-L) MLPs. The weights mask a padded last sample of client 1, so
    a backward that ignored them would differ; clients use different models, so a mixed-up client
    axis would too."""
    from fedrun.models import MLP

    torch.manual_seed(0)
    model = FlatModel(MLP((1, 28, 28), 10, hidden=list(hidden)))
    chain = batched_forward(model.module)
    assert isinstance(chain, LayerChain) and chain.explicit
    count, batch = 3, 5
    g = torch.Generator().manual_seed(2)
    x = torch.randn(count, batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (count, batch), generator=g)
    w = model.initial_vector()[None, :] + 0.05 * torch.randn(count, model.num_params, generator=g)
    weights = torch.full((count, batch), 1.0 / batch)
    weights[1] = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0])  # client 1: 4 real samples, one padding
    ce, grad = chain.ce_grad(model, w, x, y, weights)
    want_ce, want_grad = [], []
    for a in range(count):
        wa = w[a].detach().clone().requires_grad_(True)
        loss = (F.cross_entropy(model(wa, x[a]), y[a], reduction="none") * weights[a]).sum()
        (ga,) = torch.autograd.grad(loss, wa)
        want_ce.append(loss.detach())
        want_grad.append(ga)
    torch.testing.assert_close(ce, torch.stack(want_ce), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.stack(want_grad), rtol=1e-4, atol=1e-6)
    assert grad.abs().sum() > 0 and not torch.equal(grad[0], grad[2])
