"""The paper's models: exact parameter counts, shapes, no buffers, LSTM kernels that agree (and vmap)."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from fedrun.models import CNN, MLP, CharLSTM, LogisticRegression
from fedrun.models.params import FlatModel


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: MLP((1, 28, 28), 10, hidden=(200, 200)), 199_210),  # MNIST
        (lambda: MLP((1, 28, 28), 10, hidden=(100, 100)), 89_610),  # EMNIST-L
        (lambda: CNN((3, 32, 32), 10), 797_962),  # CIFAR-10
        (lambda: CNN((3, 32, 32), 100), 815_332),  # CIFAR-100
        (lambda: CharLSTM((80,), 80), 133_520),  # Shakespeare
        (lambda: LogisticRegression((30,), 5), 155),  # synthetic
    ],
)
def test_paper_parameter_counts(make, expected):
    module = make()
    assert count(module) == expected
    assert FlatModel(module).num_params == expected  # and no buffers (FlatModel refuses them)


def test_output_shapes():
    assert CNN((3, 32, 32), 100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert MLP((1, 28, 28), 10)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert CharLSTM((80,), 80)(torch.randint(0, 80, (3, 80))).shape == (3, 80)
    with pytest.raises(ValueError):
        CNN((784,), 10)


def test_lstm_explicit_matmuls_equal_the_fused_kernel_and_vmap():
    torch.manual_seed(0)
    module = CharLSTM((80,), 80)
    flat = FlatModel(module)
    theta = flat.initial_vector()
    x = torch.randint(0, 80, (6, 16))  # shorter than 80 steps: same code path, faster test
    fused = flat(theta, x)
    module.fused = False
    explicit = flat(theta, x)
    assert torch.allclose(fused, explicit, atol=1e-5)
    module.fused = True
    thetas = torch.stack([theta, theta + 0.01 * torch.randn_like(theta)])
    out = vmap(flat)(thetas, torch.stack([x, x]))  # the vectorised engine's call
    assert torch.allclose(out[0], fused, atol=1e-5)
    assert torch.allclose(out[1], flat(thetas[1], x), atol=1e-5)


def test_lstm_gradient_flows_to_every_parameter():
    module = CharLSTM((80,), 80)
    flat = FlatModel(module)
    theta = flat.initial_vector().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(flat(theta, torch.randint(0, 80, (4, 80))), torch.randint(0, 80, (4,)))
    (grad,) = torch.autograd.grad(loss, theta)
    start = 0
    for name, n in zip(flat.names, flat.numels):
        assert grad[start : start + n].abs().sum() > 0, name
        start += n
