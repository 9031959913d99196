"""FedDC's fixed point on federated least squares (the property FedDyn's test checks, for FedDC).

The problem of tests/test_feddyn_fixed_point.py: four clients with different local optima, full
participation, K full-batch gradient steps per round on L_k(w) = ||X_k w − y_k||²/(2 n_k), driven
through the algorithm's interface and the runner's row gathering (:mod:`fedrun.simulation.rounds`).

Why the fixed point is the pooled optimum (docs/algorithms.md, "FedDC"): at a fixed point h_k does not
change, so every Δ_k = θ_k − θ = 0; then G_k⁺ = G_k forces G = 0 and θ = mean θ_k + mean h gives
Σ_k h_k = 0. Client k's loss is stationary at θ: ∇L_k(θ) + α_k h_k + G/w_k − G_k = 0. With
α_k = α/w_k, Σ_k w_k α_k h_k = α Σ_k h_k = 0, and Σ_k w_k G_k = m·G = 0 (G starts at 0 and gains
Σ w_k (G_k⁺ − G_k)/m), so Σ_k w_k ∇L_k(θ) = 0: the n_k-weighted (pooled-data) least squares, EXACTLY,
whatever K. Balanced clients: the plain Σ_k ∇L_k(θ) = 0. Measured here (balanced, α = 0.5, K = 20):
6e-7 relative error after 50 rounds, 1.6e-7 (float32's floor) from 100 on; unbalanced (step size a
quarter of FedDyn's test, see below): 6e-2, 2e-5 and 1.4e-6 (the floor) after 50, 200 and 400 rounds.
The tolerance 1e-5 leaves room only for rounding; FedAvg stays ~0.5 away.
"""

from __future__ import annotations

import torch

from fedrun.algorithms.base import Algorithm, FedContext
from fedrun.algorithms.feddc import FedDC
from fedrun.algorithms.fedavg import FedAvg
from fedrun.simulation.rounds import add_tables, open_round, write_rows
from fedrun.state.store import TensorStore
from tests.test_feddyn_fixed_point import M, make_problem, rel_error, solve


def federated_least_squares(algo: Algorithm, xs, ys, rounds: int, local_steps: int, lr: float) -> torch.Tensor:
    sizes = torch.tensor([len(x) for x in xs])
    dim = xs[0].shape[1]
    # One batch per epoch (B = largest n_k) and E = K epochs: every client takes K full-batch steps,
    # and FedDC's divisor K = E·⌈(N/m)/B⌉ is the same K.
    ctx = FedContext(M, dim, sizes, batch_size=int(sizes.max()), local_epochs=local_steps, device=torch.device("cpu"))
    store = TensorStore(M, dim, torch.device("cpu"))
    add_tables(algo, store)
    const = algo.setup(ctx)
    theta = torch.zeros(dim)
    server = algo.initial_server(theta, const)
    clients = torch.arange(M)
    hessians = [x.T @ x / len(x) for x in xs]
    moments = [x.T @ y / len(x) for x, y in zip(xs, ys)]
    for r in range(1, rounds + 1):
        rnd = open_round(algo, ctx, const, store, r, lr, lr, theta, clients)
        objective = algo.local_objective(rnd, server)
        thetas = []
        for a in range(M):
            own = objective.rows(slice(a, a + 1))
            w = theta.clone()[None, :]
            for _ in range(local_steps):
                grad = w @ hessians[a] - moments[a]
                if own.has_extra:
                    grad = grad + own.extra_grad(w)
                w = w - lr * grad
            thetas.append(w[0])
        thetas = torch.stack(thetas)
        rnd = rnd.finished(clients, torch.full((M,), local_steps), {})
        new_rows = algo.client_update(rnd, server, thetas)
        theta, server = algo.server_update(rnd, server, thetas, new_rows)
        write_rows(store, rnd, new_rows)
    return theta


def step_size(xs, alpha_max: float) -> float:
    smooth = max(float(torch.linalg.eigvalsh(x.T @ x / len(x)).max()) for x in xs)
    return 0.5 / (smooth + alpha_max)


def test_feddc_reaches_the_global_least_squares_solution_and_fedavg_does_not():
    xs, ys = make_problem([30] * M)
    target = solve(xs, ys, [1.0] * M)
    alpha, K = 0.5, 20
    lr = step_size(xs, alpha)
    feddc = rel_error(federated_least_squares(FedDC(alpha=alpha), xs, ys, rounds=100, local_steps=K, lr=lr), target)
    fedavg = rel_error(federated_least_squares(FedAvg(), xs, ys, rounds=100, local_steps=K, lr=lr), target)
    assert feddc < 1e-5, f"FedDC relative error {feddc:.2e}"
    assert fedavg > 1e-2, f"FedAvg relative error {fedavg:.2e}: the problem shows no client drift"


def test_feddc_fixed_point_weights_clients_by_size_on_unbalanced_data():
    """α_k = α/w_k and G/w_k put the fixed point at Σ_k n_k ∇L_k(θ) = 0 (the pooled optimum), 0.46
    away from the per-client one Σ_k ∇L_k(θ) = 0 on this problem.

    The step size is a quarter of FedDyn's test's: the correction G/w_k − G_k scales the clients' mean
    gradient by 1/w_k (3.7 for the smallest client here), and with FedDyn's step size (K·lr twice as
    large) FedDC's rounds diverge on this problem (measured: relative error 1.7 after 100 rounds, 146
    after 300), a property of the authors' update, not of the fixed point."""
    sizes = [10, 20, 40, 80]
    xs, ys = make_problem(sizes, seed=1)
    pooled, per_client = solve(xs, ys, sizes), solve(xs, ys, [1.0] * M)
    assert rel_error(per_client, pooled) > 1e-2, "the two optima must differ"
    alpha, K = 0.5, 20
    lr = 0.25 * step_size(xs, alpha * sum(sizes) / (M * min(sizes)))  # the largest alpha_k
    theta = federated_least_squares(FedDC(alpha=alpha), xs, ys, rounds=400, local_steps=K, lr=lr)
    assert rel_error(theta, pooled) < 1e-5, f"FedDC: {rel_error(theta, pooled):.2e} from the pooled optimum"
