#!/usr/bin/env python3
"""Host-side cost of the vectorized engine's CNN steps, the part a GPU cannot hide without CUDA graphs.

The paper's CNN layers at tiny sizes (3x14x14 images, 2 channels, batch 4) on the CPU, so the
arithmetic is negligible and what is timed is Python, the dispatcher and autograd bookkeeping:
10 clients, 50 local steps (E=5), FedDyn-like extra terms, flip-and-crop augmentation. Prints the
milliseconds per round and per step and the aten ops per round (torch.profiler).

    python scripts/host_overhead.py
"""
import time, torch
from torch.profiler import profile, ProfilerActivity
from fedrun.models import CNN
from fedrun.params import FlatModel
from fedrun.data import FederatedData
from fedrun.data.augment import FlipCrop
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.engines.base import LocalTraining
from fedrun.algorithms.base import LocalObjective
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
n, A = 400, 10
x = torch.randn(n, 3, 14, 14, generator=g); y = torch.randint(0, 10, (n,), generator=g)
data = FederatedData("img", x, y, x, y, 10, augment=FlipCrop(pad=4))
model = FlatModel(CNN((3, 14, 14), 10, channels=(2, 2), hidden=(4, 4), kernel_size=3))
theta = model.initial_vector()
partition = list(torch.arange(n).split(n // A))
clients = torch.arange(A)
obj = LocalObjective(linear=torch.randn(A, model.num_params) * 1e-3, decay=torch.full((A,), 0.01))
hp = LocalTraining(lr=0.1, epochs=5, batch_size=4, weight_decay=1e-3, clip_norm=10.0)  # 10 steps/epoch -> 50 steps
eng = VectorizedEngine(gradient="batched")
eng.train(model, theta, data, partition, clients, obj, hp, 0, 1)
t = time.perf_counter()
for r in range(3):
    eng.train(model, theta, data, partition, clients, obj, hp, 0, r + 2)
dt = (time.perf_counter() - t) / 3
print(f"one round (50 steps, {A} clients, tiny tensors): {dt*1e3:.1f} ms = {dt/50*1e3:.2f} ms/step host-side")
with profile(activities=[ProfilerActivity.CPU]) as prof:  # CPU only: no CUDA profiler needed
    eng.train(model, theta, data, partition, clients, obj, hp, 0, 9)
ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
print("aten ops per round (top-level and nested):", sum(e.count for e in ops))
for e in sorted(ops, key=lambda e: -e.count)[:15]:
    print(f"{e.count / 50:7.1f}/step  {e.key}")
