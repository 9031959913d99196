"""The FedDyn paper's synthetic federated logistic-regression data (FedProx/LEAF style).

For m devices (docs/paper.md, "Synthetic"):

* sizes n_k = floor(lognormal(log(mean_samples), sigma)), at least 1;
* u_k ~ N(0, alpha²) and B_k ~ N(0, beta²) per device (alpha, beta are standard deviations, as in
  numpy's ``normal(0, alpha)`` of the reference code);
* feature mean v_k ~ N(B_k, 1)^d, or 0 when ``iid_data``;
* solution W, b ~ N(0, 1) shared by all devices when ``iid_solution``, else W_k, b_k ~ N(u_k, 1);
* x ~ N(v_k, Σ) with Σ = diag(j^-1.2), j = 1..d; y = argmax(xW + b).

Everything is drawn from one torch generator derived from the seed, so the data is a function
of the config. ``test_fraction = 0`` tests on the training data (the reference code's choice);
``test_fraction > 0`` holds out that fraction of every device's samples instead.
"""

from __future__ import annotations

import math

import torch

from fedrun.data import FederatedData
from fedrun.errors import FedrunError
from fedrun.seeding import generator


def make_synthetic(
    num_clients: int,
    seed: int,
    alpha: float = 1.0,
    beta: float = 1.0,
    sigma: float = 0.0,
    iid_solution: bool = False,
    iid_data: bool = False,
    dim: int = 30,
    num_classes: int = 5,
    mean_samples: int = 200,
    test_fraction: float = 0.0,
) -> FederatedData:
    for key, value in (("data.alpha", alpha), ("data.beta", beta), ("data.sigma", sigma)):
        if value < 0:
            raise FedrunError(f"{key}={value} is negative: use a standard deviation >= 0.")
    if dim < 1 or num_classes < 2 or mean_samples < 1:
        raise FedrunError(
            f"data.dim={dim}, data.num_classes={num_classes}, data.mean_samples={mean_samples} are impossible: "
            "use dim >= 1, num_classes >= 2 and mean_samples >= 1."
        )
    if not 0.0 <= test_fraction < 1.0:
        raise FedrunError(f"data.test_fraction={test_fraction} is out of range: use a fraction in [0, 1).")
    g = generator(seed, "data")
    m = num_clients
    sizes = torch.exp(math.log(mean_samples) + sigma * torch.randn(m, generator=g, dtype=torch.float64))
    sizes = (sizes + 1e-6).floor().long().clamp(min=2 if test_fraction > 0 else 1)  # exp(log(n)) may be n - ulp
    u = alpha * torch.randn(m, generator=g, dtype=torch.float64)
    b_mean = beta * torch.randn(m, generator=g, dtype=torch.float64)
    if iid_data:
        v = torch.zeros(m, dim, dtype=torch.float64)
    else:
        v = b_mean[:, None] + torch.randn(m, dim, generator=g, dtype=torch.float64)
    std = torch.arange(1, dim + 1, dtype=torch.float64).pow(-1.2).sqrt()
    if iid_solution:
        w_shared = torch.randn(dim, num_classes, generator=g, dtype=torch.float64)
        b_shared = torch.randn(num_classes, generator=g, dtype=torch.float64)
    xs, ys, gs = [], [], []
    for k in range(m):
        if iid_solution:
            w, b = w_shared, b_shared
        else:
            w = u[k] + torch.randn(dim, num_classes, generator=g, dtype=torch.float64)
            b = u[k] + torch.randn(num_classes, generator=g, dtype=torch.float64)
        n = int(sizes[k])
        x = v[k] + std * torch.randn(n, dim, generator=g, dtype=torch.float64)
        xs.append(x)
        ys.append(torch.argmax(x @ w + b, dim=1))
        gs.append(torch.full((n,), k, dtype=torch.long))
    x_all, y_all, g_all = torch.cat(xs).float(), torch.cat(ys), torch.cat(gs)
    if test_fraction > 0:
        is_test = torch.zeros(len(y_all), dtype=torch.bool)
        start = 0
        for n in sizes.tolist():
            n_test = max(1, min(n - 1, round(test_fraction * n)))
            is_test[start + torch.randperm(n, generator=g)[:n_test]] = True
            start += n
        train = ~is_test
        return FederatedData(
            "synthetic", x_all[train], y_all[train], x_all[is_test], y_all[is_test], num_classes, g_all[train]
        )
    return FederatedData("synthetic", x_all, y_all, x_all, y_all, num_classes, g_all)
