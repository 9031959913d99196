"""model=resnet18_gn: parameter count derived by hand, the hand-batched forward, both engines agree."""

from __future__ import annotations

import pytest
import torch

from fedrun.algorithms.base import LocalObjective
from fedrun.data import FederatedData
from fedrun.data.augment import FlipCrop
from fedrun.engines.base import LocalTraining
from fedrun.engines.sequential import SequentialEngine
from fedrun.engines.stacked import agrees, unflatten_stacked, vmap_forward
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.models.resnet import ResNet18GN
from fedrun.models.params import FlatModel


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_derived_by_hand():
    """ResNet-18-GN on 3x32x32 inputs (no conv biases; a GroupNorm over C channels has 2C parameters):

    stem   conv 7x7 3->64: 64*3*49 = 9,408; GN 128                                    ->     9,536
    layer1 2 blocks x (2 convs 64*64*9 = 36,864 each + 2 GN of 128) = 2 * 73,984        ->   147,968
    layer2 block 1: 128*64*9 = 73,728 + 128*128*9 = 147,456 + 1x1 shortcut 128*64 = 8,192
                    + 3 GN of 256 = 768                                  = 230,144
           block 2: 2 * 147,456 + 2 * 256                                 = 295,424     ->   525,568
    layer3 block 1: 256*128*9 = 294,912 + 256*256*9 = 589,824 + 256*128 = 32,768 + 3*512 = 919,040
           block 2: 2 * 589,824 + 2 * 512                                 = 1,180,672   -> 2,099,712
    layer4 block 1: 512*256*9 = 1,179,648 + 512*512*9 = 2,359,296 + 512*256 = 131,072 + 3*1,024 = 3,673,088
           block 2: 2 * 2,359,296 + 2 * 1,024                             = 4,720,640   -> 8,393,728
    backbone: 9,536 + 147,968 + 525,568 + 2,099,712 + 8,393,728 = 11,176,512
    head 512->10: 5,130 -> 11,181,642 (CIFAR-10); 512->100: 51,300 -> 11,227,812 (CIFAR-100).
    The CIFAR stem's conv is 3x3: 64*3*9 = 1,728 instead of 9,408, i.e. 7,680 fewer.
    (torchvision's resnet18 has 11,689,512 with its 1000-class head: 11,176,512 + 513,000.)
    """
    assert count(ResNet18GN((3, 32, 32), 10)) == 11_181_642
    assert count(ResNet18GN((3, 32, 32), 100)) == 11_227_812
    assert count(ResNet18GN((3, 32, 32), 10, stem="cifar")) == 11_181_642 - 7_680
    assert FlatModel(ResNet18GN((3, 32, 32), 10)).num_params == 11_181_642  # and no buffers


def test_shapes_and_bad_settings():
    assert ResNet18GN((3, 32, 32), 100, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert ResNet18GN((1, 28, 28), 10, width=8, stem="cifar")(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for kwargs in ({"stem": "resnet"}, {"width": 6, "groups": 4}):
        with pytest.raises(ValueError):
            ResNet18GN((3, 32, 32), 10, **kwargs)
    with pytest.raises(ValueError):
        ResNet18GN((784,), 10)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_hand_batched_forward_and_vmap_match_the_module(stem):
    """Client a's logits from the stacked forward equal the module run on client a's parameters alone."""
    torch.manual_seed(0)
    model = FlatModel(ResNet18GN((3, 16, 16), 5, width=8, groups=2, stem=stem))
    theta = model.initial_vector()
    w = torch.stack([theta, theta + 0.05 * torch.randn_like(theta), theta - 0.05 * torch.randn_like(theta)])
    x = torch.randn(3, 4, 3, 16, 16)
    want = torch.stack([model(w[a], x[a]) for a in range(3)])
    for forward in (model.module.stacked_forward, vmap_forward(model.module)):
        torch.testing.assert_close(forward(unflatten_stacked(model, w), x), want, rtol=1e-4, atol=1e-5)
    assert agrees(model, model.module.stacked_forward, x[0])


def tiny_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (20,), generator=g)
    data = FederatedData("img", x, y, x, y, 4, augment=FlipCrop(pad=2))  # per-client flips and crops
    partition = list(torch.arange(20).split([4, 9, 7]))  # 1, 2, 2 batches of 5
    torch.manual_seed(1)
    model = FlatModel(ResNet18GN((3, 16, 16), 4, width=4, groups=2))
    return data, partition, model


@pytest.mark.parametrize("gradient", ["auto", "batched", "vmap"])
def test_engines_agree_on_a_tiny_cifar_shaped_problem(gradient):
    """One round (E=1, B=5: 1-2 steps per client, uneven) with FedDyn/FedProx-style extra terms:
    the vectorised engine (one client at a time on CPU under auto, all at once otherwise) equals the
    sequential engine to float32 rounding."""
    data, partition, model = tiny_problem()
    theta = model.initial_vector()
    g = torch.Generator().manual_seed(2)
    objective = LocalObjective(linear=torch.randn(3, theta.numel(), generator=g) * 0.01, prox=torch.rand(3, generator=g),
                               anchor=theta.clone(), decay=torch.rand(3, generator=g) * 0.01)
    hp = LocalTraining(lr=0.05, epochs=1, batch_size=5, weight_decay=1e-3, clip_norm=10.0)
    clients = torch.arange(3)
    seq = SequentialEngine().train(model, theta, data, partition, clients, objective, hp, 3, 2)
    vec = VectorizedEngine(gradient=gradient).train(model, theta, data, partition, clients, objective, hp, 3, 2)
    assert seq.steps.tolist() == [1, 2, 2] == vec.steps.tolist()
    assert (seq.thetas - theta).abs().max() > 1e-3  # training moved every client
    torch.testing.assert_close(vec.thetas, seq.thetas, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vec.loss, seq.loss, rtol=1e-4, atol=1e-5)


def test_on_cpu_auto_trains_one_client_at_a_time_with_the_hand_batched_forward():
    data, _, model = tiny_problem()
    auto = VectorizedEngine()
    assert auto.forward_for(model, data) == model.module.stacked_forward
    assert auto.chunk_for(model, 10, 5, torch.device("cpu")) == 1
    forced = VectorizedEngine(gradient="batched")
    forced.forward_for(model, data)
    assert forced.chunk_for(model, 10, 5, torch.device("cpu")) == 10  # all at once when memory allows
    explicit = VectorizedEngine(chunk_size=3)
    explicit.forward_for(model, data)
    assert explicit.chunk_for(model, 10, 5, torch.device("cpu")) == 3  # the user's chunk size wins
