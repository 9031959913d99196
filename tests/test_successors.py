"""FedDC, FedSpeed, FedSMOO and FedNova: their first two rounds against updates derived by hand.

The problem (the same for every method, small enough to follow with pencil and paper): one scalar
parameter w (a linear model y = w with the identity feature), m = 4 clients with local loss
f_k(w) = (w − b_k)²/2, b = (4, −4, 16, 10), so ∇f_k(w) = w − b_k. Local training is deterministic
gradient descent with lr η = 0.5 on f_k plus the method's terms (no clipping, no weight decay, one
step per round unless a test says otherwise), driven through the algorithm's real interface and
local-gradient hook by :func:`run_rounds`. The server model starts at θ⁰ = 0 and all state at 0.

Round 1 has clients {0, 2} active, round 2 clients {2, 3}: client 2 is active twice (its state is
carried), client 0 once (its rows must not change in round 2), client 1 never (its rows stay zero).
Each docstring derives the numbers the test asserts (all exact binary fractions; the SAM norms'
+1e-7 moves them by < 1e-7 relative, far inside the tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from fedrun.algorithms.base import FedContext
from fedrun.algorithms.feddc import FedDC
from fedrun.algorithms.fednova import FedNova
from fedrun.algorithms.fedsmoo import FedSMOO
from fedrun.algorithms.fedspeed import FedSpeed
from fedrun.simulation.rounds import add_tables, open_round, write_rows
from conftest import build
from fedrun.simulation.round import run_round
from fedrun.simulation.sampling import SAMPLERS
from fedrun.state.store import TensorStore
from tests.conftest import compose_config

B = (4.0, -4.0, 16.0, 10.0)
ROUNDS = ([0, 2], [2, 3])
LR = 0.5
METHODS = {"feddc": FedDC, "fedspeed": FedSpeed, "fedsmoo": FedSMOO, "fednova": FedNova}


@dataclass
class Outcome:
    thetas: list[torch.Tensor]  # server model after each round
    client_models: list[torch.Tensor]  # [A] active clients' models of each round
    state: dict[str, torch.Tensor]  # [m] every client's rows after the last round
    server: dict[str, torch.Tensor]


def run_rounds(name: str, sizes=(1, 1, 1, 1), batch_size: int = 1, b=B, **hparams) -> Outcome:
    """Two rounds of ``name`` on f_k(w) = (w − b_k)²/2, one epoch of E·⌈n_k/B⌉ full-gradient steps.

    The engines' step with the loss f_k for the cross-entropy: the hook's gradient when the
    objective has one (else f_k's plus the extra terms'), no clip, then the objective's decay.
    """
    algo = METHODS[name](**hparams)
    m = len(b)
    ctx = FedContext(m, 1, torch.tensor(sizes), batch_size, 1, torch.device("cpu"))
    store = TensorStore(m, 1, torch.device("cpu"))
    add_tables(algo, store)
    const = algo.setup(ctx)
    theta = torch.zeros(1)
    server = algo.initial_server(theta, const)
    out = Outcome([], [], {}, {})
    for index, active in enumerate(ROUNDS, start=1):
        clients = torch.tensor(active)
        rnd = open_round(algo, ctx, const, store, index, LR, LR, theta, clients)
        objective = algo.local_objective(rnd, server)
        steps = torch.tensor([math.ceil(sizes[k] / batch_size) for k in active])
        models = []
        for a, k in enumerate(active):
            own = objective.rows(slice(a, a + 1))

            def grad_fn(v: torch.Tensor, extra: bool = True, k: int = k, own=own):
                grad = v - b[k]
                if extra and own.has_extra:
                    grad = grad + own.extra_grad(v)
                return 0.5 * (v - b[k]).pow(2).sum(-1), grad

            w = theta.clone()[None, :]
            decay = 0.0 if own.decay is None else own.decay.reshape(1, 1)
            for _ in range(int(steps[a])):
                _, grad = own.step_gradient(grad_fn, w)
                w = w - LR * (grad + decay * w)
            models.append(w[0])
        thetas = torch.stack(models)
        local = {} if objective.hook is None else objective.hook.result()
        rnd = rnd.finished(clients, steps, local)
        new_rows = algo.client_update(rnd, server, thetas)
        theta, server = algo.server_update(rnd, server, thetas, new_rows)
        write_rows(store, rnd, new_rows)
        out.thetas.append(theta.clone())
        out.client_models.append(thetas[:, 0].clone())
    out.state = {name: store.get(name, torch.arange(m))[:, 0] for name in algo.client_states}
    out.server = server
    return out


def close(actual, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64).flatten(),
                               torch.tensor(expected, dtype=torch.float64).flatten(), rtol=1e-6, atol=1e-6)


def test_feddc_two_rounds_by_hand():
    """FedDC (authors' code, docs/algorithms.md), α = 1, unbalanced sizes n = (1, 1, 4, 2):
    N = 8, w_k = n_k·m/N = (1/2, 1/2, 2, 1), α_k = α/w_k = (2, 2, 1/2, 1). B = 4, E = 1, so every
    client takes one step and the divisor's K = E·⌈(N/m)/B⌉ = 1, 1/(K·η₀) = 2. Step: w ← w − η·[(w − b)
    + α_k(w − θ + h_k) + (G/w_k − G_k)].

    Round 1, θ = 0, every state 0: the gradient at w = θ is −b, so θ_0 = 2, θ_2 = 8.
      h_0 = 2, h_2 = 8;  G_k⁺ = G_k − G/w_k − 2Δ_k: G_0 = −4, G_2 = −16;
      G = 0 + (½·(−4) + 2·(−16))/4 = −17/2;  θ¹ = mean(2, 8) + (2 + 0 + 8 + 0)/4 = 15/2.
    Round 2, θ = 15/2, G = −17/2:
      client 2 (w=2, α=1/2, h=8, G_2=−16): grad = (15/2 − 16) + ½·8 + (−17/4 + 16) = 29/4
        → θ_2 = 15/2 − 29/8 = 31/8, Δ = −29/8, h_2 = 35/8, G_2⁺ = −16 + 17/4 + 29/4 = −9/2;
      client 3 (w=1, α=1, h=0, G_3=0): grad = (15/2 − 10) + 0 + (−17/2) = −11 → θ_3 = 13,
        Δ = 11/2, h_3 = 11/2, G_3⁺ = 0 + 17/2 − 11 = −5/2;
      G = −17/2 + (2·(−9/2 + 16) + 1·(−5/2 − 0))/4 = −27/8;
      θ² = mean(31/8, 13) + (2 + 0 + 35/8 + 11/2)/4 = 135/16 + 95/32 = 365/32.
    """
    out = run_rounds("feddc", sizes=(1, 1, 4, 2), batch_size=4, alpha=1.0)
    close(out.thetas, [15 / 2, 365 / 32])
    close(out.client_models[1], [31 / 8, 13.0])  # round 2's active models (clients 2, 3)
    close(out.state["h"], [2.0, 0.0, 35 / 8, 11 / 2])
    close(out.state["G"], [-4.0, 0.0, -9 / 2, -5 / 2])
    close(out.server["G"], -27 / 8)


def test_fedspeed_two_rounds_by_hand():
    """FedSpeed (FL-Simulator's code), λ = 1, ρ = 2, equal sizes, b_3 = 8 (not 10). Step: e = ρ·g/|g|
    with g = ∇f(w), the loss alone (in 1-D: ρ·sign(g)); w ← w − η·[∇f(w + e) + λ(h_k − θ) + λw], so
    with η = 1/2, λ = 1 and one step from w = θ: θ_k = (b_k + θ − h_k − e)/2.

    Round 1, θ = 0: g = −b < 0 for clients 0 and 2, e = −2: θ_0 = (4 + 2)/2 = 3, θ_2 = (16 + 2)/2 = 9;
      h = (3, 0, 9, 0); θ¹ = mean(3, 9) + (3 + 9)/4 = 9.
    Round 2, θ = 9:
      client 2 (h=9): g = 9 − 16 = −7, e = −2: θ_2 = (16 + 9 − 9 + 2)/2 = 9, h_2 = 9 + 0 = 9;
      client 3 (h=0): g = 9 − 8 = +1, e = +2: θ_3 = (8 + 9 − 0 − 2)/2 = 15/2, h_3 = −3/2 (with the
        extra term in g, 1 + λ(0 − 9) = −8 would give e = −2 and θ_3 = 19/2);
      θ² = mean(9, 15/2) + (3 + 0 + 9 − 3/2)/4 = 33/4 + 21/8 = 87/8.
    """
    out = run_rounds("fedspeed", b=(4.0, -4.0, 16.0, 8.0), lamb=1.0, rho=2.0)
    close(out.thetas, [9.0, 87 / 8])
    close(out.client_models[1], [9.0, 15 / 2])
    close(out.state["h"], [3.0, 0.0, 9.0, -3 / 2])


def test_fedsmoo_two_rounds_by_hand():
    """FedSMOO (FL-Simulator's code), λ = 1, ρ = 2, equal sizes. Step: g = ∇f(w), d = g − μ_k − s,
    e = ρ·d/|d|, μ_k ← μ_k + e − s, then FedSpeed's step with that e: θ_k = (b_k + θ − h_k − e)/2.
    Server: s = ρ·μ̄/|μ̄| with μ̄ the mean of the ACTIVE clients' new μ_k.

    Round 1, θ = 0, s = 0: as FedSpeed (d = g = −b): e = −2, θ_0 = 3, θ_2 = 9, h = (3, 0, 9, 0),
      μ_0 = μ_2 = 0 − 2 − 0 = −2; s = 2·(−2)/2 = −2; θ¹ = 9.
    Round 2, θ = 9, s = −2:
      client 2 (h=9, μ=−2): g = −7, d = −7 + 2 + 2 = −3, e = −2, μ_2 = −2 − 2 + 2 = −2, θ_2 = 9, h_2 = 9;
      client 3 (h=0, μ=0): g = −1, d = −1 − 0 + 2 = +1, so e = +2 (FedSpeed's would be −2),
        μ_3 = 0 + 2 + 2 = 4, θ_3 = (10 + 9 − 0 − 2)/2 = 17/2, h_3 = −1/2;
      μ̄ = mean(−2, 4) = 1 → s = 2 (the mean over all four clients, 0, would give s = 0);
      θ² = mean(9, 17/2) + (3 + 0 + 9 − 1/2)/4 = 35/4 + 23/8 = 93/8.
    """
    out = run_rounds("fedsmoo", lamb=1.0, rho=2.0)
    close(out.thetas, [9.0, 93 / 8])
    close(out.client_models[1], [9.0, 17 / 2])
    close(out.state["h"], [3.0, 0.0, 9.0, -1 / 2])
    close(out.state["mu"], [-2.0, 0.0, -2.0, 4.0])
    close(out.server["s"], 2.0)


def test_fednova_two_rounds_by_hand():
    """FedNova (authors' code, plain SGD): sizes n = (1, 2, 3, 2), B = 1, E = 1, so client k takes
    τ_k = n_k steps; each step halves the distance to b_k (η = 1/2 on (w − b)²/2).

    Round 1, θ = 0, clients {0, 2}: θ_0 = 2 (1 step), θ_2: 8, 12, 14 (3 steps); p = (1/4, 3/4);
      τ_eff = 1/4·1 + 3/4·3 = 5/2; θ¹ = 0 + 5/2·(1/4·2/1 + 3/4·14/3) = 5/2·4 = 10
      (FedAvg's n_k-weighted mean would be 1/4·2 + 3/4·14 = 11).
    Round 2, θ = 10, clients {2, 3}: θ_2: 13, 29/2, 61/4 (Δ = 21/4); θ_3 = 10 (b_3 = θ, Δ = 0);
      p = (3/5, 2/5); τ_eff = 9/5 + 4/5 = 13/5; θ² = 10 + 13/5·(3/5·(21/4)/3 + 0) = 10 + 273/100.
    With server momentum gmf = 1/2 (buf = d/η first, then gmf·buf + d/η; θ ← θ − η·buf, d = θ − θ_new):
      round 1 d = −10, buf = −20, θ¹ = 10; round 2 d = −273/100, buf = −10 − 273/50, θ² = 10 + 5 + 273/100.
    """
    out = run_rounds("fednova", sizes=(1, 2, 3, 2), batch_size=1)
    close(out.thetas, [10.0, 10 + 273 / 100])
    close(out.client_models[1], [61 / 4, 10.0])
    momentum = run_rounds("fednova", sizes=(1, 2, 3, 2), batch_size=1, gmf=0.5)
    close(momentum.thetas, [10.0, 15 + 273 / 100])


# ---- through the runner and the real engines --------------------------------------------------

SMALL = [
    "num_clients=6", "participation=0.5", "sampling=fixed", "data.mean_samples=20", "local_epochs=2",
    "batch_size=8", "lr=0.05", "progress=false", "engine=sequential",
]


def run_real(*overrides: str, rounds: int = 3):
    exp = build(compose_config(*SMALL, *overrides))
    for r in range(1, rounds + 1):
        run_round(exp, r)
    return exp


@pytest.mark.parametrize("name", ["fedspeed", "fedsmoo"])
def test_sam_methods_without_sam_are_feddyn_on_balanced_clients(name: str):
    """ρ = 0: the ascent e = 0·g/(‖g‖ + 1e-7) is exactly 0, FedSMOO's μ_k and s stay 0, and what is
    left is FedDyn's reference form with α_k = λ (balanced clients: w_k = 1, so α_k = α = λ)."""
    sam = run_real(f"algo={name}", "algo.rho=0", "algo.lamb=0.05")
    dyn = run_real("algo=feddyn", "algo.alpha=0.05")
    assert len(set(sam.ctx.client_sizes.tolist())) == 1, "the clients must be balanced"
    torch.testing.assert_close(sam.theta, dyn.theta, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sam.store.tables["h"], dyn.store.tables["s"], rtol=1e-6, atol=1e-7)


def test_sam_changes_fedspeed():
    """ρ > 0 moves the result (the hook is really used): 3 rounds differ from ρ = 0 by > 1e-4."""
    with_sam = run_real("algo=fedspeed", "algo.rho=0.5")
    without = run_real("algo=fedspeed", "algo.rho=0")
    assert (with_sam.theta - without.theta).abs().max() > 1e-4


def test_fednova_is_weighted_fedavg_with_equal_steps_and_differs_without():
    """Equal τ_k: θ + τ·Σ p_k (θ_k − θ)/τ = Σ p_k θ_k, FedAvg's n_k-weighted mean. Unbalanced sizes
    give different τ_k = E·⌈n_k/B⌉ and a different model."""
    nova, avg = run_real("algo=fednova"), run_real("algo=fedavg")
    torch.testing.assert_close(nova.theta, avg.theta, rtol=1e-5, atol=1e-6)
    uneven = ("partition=unbalanced",)
    nova, avg = run_real("algo=fednova", *uneven), run_real("algo=fedavg", *uneven)
    assert len(set(nova.ctx.client_sizes.tolist())) > 1
    assert (nova.theta - avg.theta).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["feddc", "fedspeed", "fedsmoo"])
def test_inactive_clients_state_is_untouched_by_the_runner(name: str):
    """Round 2 changes the state rows of its active clients only (real engine and store)."""
    one = run_real(f"algo={name}", "partition=unbalanced", rounds=1)
    before = {k: v.clone() for k, v in one.store.items()}
    run_round(one, 2)
    active = SAMPLERS["fixed"](6, 0.5, 0, 2)
    idle = torch.tensor([k for k in range(6) if k not in active.tolist()])
    for table, rows in one.store.items():
        if table.startswith("_"):
            continue
        assert torch.equal(rows[idle], before[table][idle]), f"{table}: an inactive client's row changed"
        assert not torch.equal(rows[active], before[table][active]), f"{table}: the active rows did not change"


@pytest.mark.parametrize("overrides", [("algo=feddc",), ("algo=fedsmoo",), ("algo=fednova", "algo.gmf=0.5")])
def test_checkpoint_restores_every_piece_of_state(overrides: tuple[str, ...], tmp_path):
    """Rounds 3-4 after a checkpoint of round 2 and a fresh build equal rounds 3-4 of the uninterrupted
    run bit for bit: client tables (h, G, mu), server state (G, h_mean, s, FedNova's momentum buf)."""
    from fedrun.rundir import checkpoint

    straight = run_real(*overrides, "partition=unbalanced", rounds=2)
    checkpoint.save(tmp_path, straight, checkpoint.Counters(round=2), rows=[])
    resumed = build(compose_config(*SMALL, *overrides, "partition=unbalanced"))
    # verify=False: a checkpoint saved without the metrics rows a run would have (not what this test is about)
    checkpoint.restore(checkpoint.load(tmp_path / checkpoint.CHECKPOINT, verify=False), resumed)
    assert set(straight.server) == set(resumed.server) and len(straight.server) > 0
    for r in (3, 4):
        run_round(straight, r)
        run_round(resumed, r)
    assert torch.equal(resumed.theta, straight.theta)
    for name, value in straight.server.items():
        assert torch.equal(resumed.server[name], value), name
    for name, table in straight.store.items():
        assert torch.equal(resumed.store.tables[name], table), name
