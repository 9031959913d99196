#!/usr/bin/env python3
"""Host-side cost of the vectorised engine's local steps: time per round and aten ops per step.

    python scripts/host_overhead.py [default|mnist|cnn ...] [threads=1] [compile=false]

- ``default``: a round of the default ``fedrun`` (synthetic, logreg 30->5, FedDyn, 20 clients,
  p=0.1: about 2 clients x 200 steps of B=10);
- ``mnist``: the MNIST MLP 784-200-200-10, 10 clients x 12 steps of B=50, FedDyn-like extra terms
  (random inputs: only the cost is measured);
- ``cnn``: the paper's CNN layers at tiny sizes (3x14x14 images, 2 channels, batch 4) with
  flip-and-crop, 10 clients x 50 steps, hand-batched through autograd: the arithmetic is
  negligible, so what is timed is Python, the dispatcher and autograd, the part a GPU cannot hide
  without CUDA graphs.

For each: the first round's seconds (with ``compile=true`` the compile time), milliseconds per
round (wall and this process's CPU time; best of 5 after it), aten kernels and view operations per local step (a ``TorchDispatchMode`` over one round),
and the most frequent kernels. On a shared machine compare CPU times, and variants side by side.
"""
from __future__ import annotations

import collections
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedrun.algorithms.base import LocalObjective
from fedrun.data import FederatedData
from fedrun.data.augment import FlipCrop
from fedrun.engines.base import LocalTraining
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.models import CNN, MLP
from fedrun.models.params import FlatModel


def default_setting(compile_step: bool):
    from hydra import compose, initialize_config_dir

    from fedrun.config.schema import CONF_DIR, register_configs
    from fedrun.config import specs
    from fedrun.simulation.build import build
    from fedrun.simulation.round import run_round

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["device=cpu", f"engine.compile={str(compile_step).lower()}"])
    exp = build(specs.read(cfg))
    state = {"round": 0}

    def one_round() -> None:
        state["round"] += 1
        run_round(exp, state["round"])

    return exp.engine, one_round


def toy_setting(name: str, compile_step: bool):
    g = torch.Generator().manual_seed(0)
    clients = 10
    if name == "mnist":
        n, shape, module, augment = 6000, (784,), MLP((784,), 10, hidden=(200, 200)), None
        hp = LocalTraining(lr=0.1, epochs=1, batch_size=50, weight_decay=1e-3, clip_norm=10.0)
        engine = VectorizedEngine(compile=compile_step)
    else:
        n, shape, augment = 400, (3, 14, 14), FlipCrop(pad=4)
        module = CNN((3, 14, 14), 10, channels=(2, 2), hidden=(4, 4), kernel_size=3)
        hp = LocalTraining(lr=0.1, epochs=5, batch_size=4, weight_decay=1e-3, clip_norm=10.0)
        engine = VectorizedEngine(gradient="batched", compile=compile_step)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    data = FederatedData("toy", x, y, x, y, 10, augment=augment)
    model = FlatModel(module)
    theta = model.initial_vector()
    partition = list(torch.arange(n).split(n // clients))
    objective = LocalObjective(linear=torch.randn(clients, model.num_params, generator=g) * 1e-3, decay=torch.full((clients,), 0.01))
    state = {"round": 0}

    def one_round() -> None:
        state["round"] += 1
        engine.train(model, theta, data, partition, torch.arange(clients), objective, hp, 0, state["round"])

    return engine, one_round


def measure(name: str, compile_step: bool) -> None:
    engine, one_round = default_setting(compile_step) if name == "default" else toy_setting(name, compile_step)
    steps = {"n": 0}
    train = engine.train

    def counting(*args):
        result = train(*args)
        steps["n"] += int(result.steps.max()) if len(result.steps) else 0
        return result

    engine.train = counting
    first = time.perf_counter()
    one_round()  # warm-up: with compile=true this round compiles
    first = time.perf_counter() - first
    walls, cpus, rounds = [], [], 5
    for _ in range(5):
        steps["n"] = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            one_round()
        walls.append((time.perf_counter() - wall) / rounds)
        cpus.append((time.process_time() - cpu) / rounds)
    per_round = steps["n"] / rounds
    kinds: collections.Counter = collections.Counter()
    counts = {"ops": 0, "views": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts["views" if func.is_view else "ops"] += 1
            if not func.is_view:
                kinds[func.__name__] += 1
            return func(*args, **(kwargs or {}))

    steps["n"] = 0
    with Count():
        one_round()
    n = max(steps["n"], 1)
    print(f"{name} (threads {torch.get_num_threads()}, compile {compile_step}, load {os.getloadavg()[0]:.1f}): "
          f"{min(walls) * 1e3:.1f} ms/round wall, {min(cpus) * 1e3:.1f} ms CPU, {per_round:.0f} steps/round "
          f"= {min(cpus) / max(per_round, 1) * 1e6:.0f} us CPU/step; {counts['ops'] / n:.1f} kernels "
          f"+ {counts['views'] / n:.1f} views per step (the whole round's training); first round {first:.1f} s")
    print("   " + ", ".join(f"{k} {c / n:.1f}" for k, c in kinds.most_common(12)))


def main(argv: list[str]) -> None:
    names = [a for a in argv if "=" not in a] or ["default", "mnist", "cnn"]
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    torch.set_num_threads(int(options.get("threads", 1)))
    for name in names:
        measure(name, options.get("compile", "false") == "true")


if __name__ == "__main__":
    main(sys.argv[1:])
