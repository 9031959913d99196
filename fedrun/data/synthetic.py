"""The FedDyn paper's synthetic federated logistic-regression data (FedProx/LEAF style).

For m devices (docs/paper.md, "Synthetic"):

* sizes n_k = floor(lognormal(log(mean_samples), sigma)), at least 1;
* u_k ~ N(0, alpha²) and B_k ~ N(0, beta²) per device (alpha, beta are standard deviations, as in
  numpy's ``normal(0, alpha)`` of the reference code);
* feature mean v_k ~ N(B_k, 1)^d, or 0 when ``iid_data``;
* solution W, b ~ N(0, 1) shared by all devices when ``iid_solution``, else W_k, b_k ~ N(u_k, 1);
* x ~ N(v_k, Σ) with Σ = diag(j^-1.2), j = 1..d; y = argmax(xW + b).

Everything is drawn from one torch generator derived from the seed, so the data is a function
of the config. ``test_fraction = 0`` tests on the training data (the reference code's choice, kept
by the paper settings); ``test_fraction > 0`` holds out that fraction of every device's samples
instead; ``test_samples = T > 0`` draws a test set of its own: T samples, each from the device of a
training sample picked uniformly (device k with probability n_k/N), with that device's feature
distribution and solution, from a second stream (the training data stays as without it). A test
set of fixed size keeps evaluation's cost independent of the number of devices.

``generator``: ``loop`` (the default, the stream every existing setting was made with: per device,
its solution and then its samples) or ``vectorized`` (the same sizes, u_k, B_k and v_k, the same
distributions, but the solutions and samples of many devices drawn at once, in chunks of about
:data:`CHUNK_ROWS` samples, and the held-out split drawn for all devices at once): a million
devices in seconds instead of hours, but other numbers than ``loop``, so it is its own option
(``tests/test_synthetic.py`` checks the two agree in distribution).
"""

from __future__ import annotations

import math

import torch

from fedrun.data import FederatedData
from fedrun.errors import FedrunError
from fedrun.seeding import generator

GENERATORS = ("loop", "vectorized")
CHUNK_ROWS = 2**19  # samples (padded) drawn at once by generator=vectorized: ~125 MB of float64 features at d=30


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
    test_samples: int = 0,
    generator: str = "loop",
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
    if generator not in GENERATORS:
        raise FedrunError(f"data.generator={generator} is unknown: use data.generator=loop (the default) or data.generator=vectorized.")
    if test_samples < 0 or (test_samples > 0 and test_fraction > 0):
        raise FedrunError(
            f"data.test_samples={test_samples} with data.test_fraction={test_fraction}: use test_samples >= 0, and at most one "
            "of the two (test_samples: a test set of its own; test_fraction: held out of every device)."
        )
    g = _generator(seed, "data")
    m = num_clients
    sizes = torch.exp(math.log(mean_samples) + sigma * torch.randn(m, generator=g, dtype=torch.float64))
    sizes = (sizes + 1e-6).floor().clamp(min=2 if test_fraction > 0 else 1)  # exp(log(n)) may be n - ulp
    _check_drawn_sizes(sizes, dim, sigma, mean_samples)  # before .long(): a size past int64 would wrap
    sizes = sizes.long()
    u = alpha * torch.randn(m, generator=g, dtype=torch.float64)
    b_mean = beta * torch.randn(m, generator=g, dtype=torch.float64)
    if iid_data:
        v = torch.zeros(m, dim, dtype=torch.float64)
    else:
        v = b_mean[:, None] + torch.randn(m, dim, generator=g, dtype=torch.float64)
    std = torch.arange(1, dim + 1, dtype=torch.float64).pow(-1.2).sqrt()
    w_shared = b_shared = None
    if iid_solution:
        w_shared = torch.randn(dim, num_classes, generator=g, dtype=torch.float64)
        b_shared = torch.randn(num_classes, generator=g, dtype=torch.float64)
    tests = _test_devices(sizes, test_samples, seed)  # [T] sorted devices of the own test set (empty: none)
    if generator == "vectorized":
        return _vectorized(g, sizes, u, v, std, w_shared, b_shared, num_classes, test_fraction, tests, seed)
    xs, ys, gs, txs, tys = [], [], [], [], []
    t_first = torch.searchsorted(tests, torch.arange(m + 1))  # device k's test samples: tests[t_first[k]:t_first[k+1]]
    g_test = _generator(seed, "data", 1)
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
        n_t = int(t_first[k + 1] - t_first[k])
        if n_t:
            xt = v[k] + std * torch.randn(n_t, dim, generator=g_test, dtype=torch.float64)
            txs.append(xt)
            tys.append(torch.argmax(xt @ w + b, dim=1))
    x_all, y_all, g_all = torch.cat(xs).float(), torch.cat(ys), torch.cat(gs)
    if len(tests):
        return FederatedData("synthetic", x_all, y_all, torch.cat(txs).float(), torch.cat(tys), num_classes, g_all)
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


def _check_drawn_sizes(sizes: torch.Tensor, dim: int, sigma: float, mean_samples: int) -> None:
    """Refuse device sizes (float64, drawn) whose samples need more memory than the machine has, or
    that no int64 can hold: one sentence naming data.sigma and data.mean_samples, not an allocation
    error. The estimate is :func:`fedrun.config.sizes.check_sizes`'s: float64 features and a label."""
    from fedrun.config.sizes import gib, host_total_bytes

    total = float(sizes.sum())  # float64: inf or past 2**63 when the lognormal explodes
    need = 8.0 * total * (dim + 1)
    have = host_total_bytes()
    if not math.isfinite(need) or total >= 2**62 or need > have:
        largest = float(sizes.max())
        raise FedrunError(
            f"data=synthetic with data.sigma={sigma} and data.mean_samples={mean_samples} draws {total:.3g} samples "
            f"(the largest device {largest:.3g}), about {gib(need) if math.isfinite(need) else 'infinite'} of memory, "
            f"more than this machine's {gib(have)}: lower data.sigma or data.mean_samples."
        )


def _generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    return generator(seed, purpose, *keys)


def _test_devices(sizes: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """[count] sorted devices of the own test set: the devices of ``count`` training samples drawn
    uniformly with replacement (device k with probability n_k/N), from the stream (seed, data, 2)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    picks = torch.randint(int(sizes.sum()), (count,), generator=_generator(seed, "data", 2))
    return torch.sort(torch.searchsorted(torch.cumsum(sizes, 0), picks, right=True)).values


def _vectorized(g, sizes, u, v, std, w_shared, b_shared, num_classes, test_fraction, tests, seed) -> FederatedData:
    """generator=vectorized: the samples and solutions of chunks of devices at once, in float32.

    Each chunk's devices draw their solutions [c, d, C] and [c, C], then features for a padded block
    [c, n_max, d] (n_max the chunk's largest device; padding rows are drawn and dropped; a chunk of
    equal devices is drawn straight into the output), labels by one batched matmul; the devices' own
    test samples draw from the stream (seed, data, 1) chunk by chunk. Sizes, u_k, B_k and v_k are
    the ``loop`` generator's (drawn before, in float64)."""
    m, dim = v.shape
    total = int(sizes.sum())
    x_out = torch.empty(total, dim, dtype=torch.float32)
    y_out = torch.empty(total, dtype=torch.long)
    xt_out = torch.empty(len(tests), dim, dtype=torch.float32)
    yt_out = torch.empty(len(tests), dtype=torch.long)
    g_test = _generator(seed, "data", 1)
    u32, v32, std32 = u.float(), v.float(), std.float()
    per_device = max(1, CHUNK_ROWS // max(1, int(sizes.max())))
    offsets = torch.cumsum(sizes, 0) - sizes
    t_first = torch.searchsorted(tests, torch.arange(0, m + per_device, per_device).clamp(max=m))
    for i, lo in enumerate(range(0, m, per_device)):
        hi = min(m, lo + per_device)
        c, n = sizes[lo:hi], int(sizes[lo:hi].max())
        if w_shared is None:
            w = u32[lo:hi, None, None] + torch.randn(hi - lo, dim, num_classes, generator=g)
            b = u32[lo:hi, None] + torch.randn(hi - lo, num_classes, generator=g)
        else:
            w, b = w_shared.float().expand(hi - lo, dim, num_classes), b_shared.float().expand(hi - lo, num_classes)
        start, stop = int(offsets[lo]), int(offsets[hi - 1] + sizes[hi - 1])
        full = bool((c == n).all())
        x = x_out[start:stop].view(hi - lo, n, dim) if full else torch.empty(hi - lo, n, dim)
        torch.randn(x.shape, generator=g, out=x)
        x.mul_(std32).add_(v32[lo:hi, None, :])
        y = torch.argmax(torch.baddbmm(b[:, None, :], x, w), dim=2)
        if full:
            y_out[start:stop] = y.reshape(-1)
        else:
            real = torch.arange(n)[None, :] < c[:, None]  # row-major: device by device, its samples in order
            x_out[start:stop] = x[real]
            y_out[start:stop] = y[real]
        t_lo, t_hi = int(t_first[i]), int(t_first[i + 1])
        if t_hi > t_lo:
            dev = tests[t_lo:t_hi] - lo
            xt = v32[tests[t_lo:t_hi]] + std32 * torch.randn(t_hi - t_lo, dim, generator=g_test)
            xt_out[t_lo:t_hi] = xt
            yt_out[t_lo:t_hi] = torch.argmax(torch.einsum("td,tdc->tc", xt, w[dev]) + b[dev], dim=1)
    groups = torch.repeat_interleave(torch.arange(m), sizes)
    if len(tests):
        return FederatedData("synthetic", x_out, y_out, xt_out, yt_out, num_classes, groups)
    if test_fraction > 0:  # n_test = max(1, min(n - 1, round(f n))) of each device, chosen uniformly: for all at once
        n_test = (test_fraction * sizes.double()).round().long().clamp(max=sizes - 1).clamp(min=1)
        key = torch.rand(total, generator=g, dtype=torch.float64)
        order = torch.argsort(groups.double() * 2 + key, stable=True)  # by device, then by the random key (key < 1 < 2)
        rank = torch.empty(total, dtype=torch.long)
        rank[order] = torch.arange(total) - torch.repeat_interleave(offsets, sizes)
        is_test = rank < n_test[groups]
        train = ~is_test
        return FederatedData("synthetic", x_out[train], y_out[train], x_out[is_test], y_out[is_test], num_classes, groups[train])
    return FederatedData("synthetic", x_out, y_out, x_out, y_out, num_classes, groups)
