"""FedDyn, FedProx, SCAFFOLD and FedAdam against updates written out independently (docs/paper.md).

The reference implementations below follow docs/paper.md line by line, in the style of the FedDyn
reference code: an ``nn.Module`` per client, ``torch.optim.SGD(weight_decay=...)`` after
``clip_grad_norm_``, the algorithm's term added to the loss on the module's live parameters, and
explicit per-client loops over the active ids with dense ``[m, P]`` state arrays. They share with
fedrun only the batch order (``batch_schedule``/``client_generators``, itself checked against
torch SGD in test_fedavg.py) and the client sampler, so any disagreement is an algorithm bug.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedrun.simulation.rounds import open_round
from fedrun.engines.base import batch_schedule, client_generators
from fedrun.errors import FedrunError
from fedrun.simulation.evaluation import evaluate
from conftest import build
from fedrun.simulation.round import evaluate_round, metric_columns, run_round
from fedrun.runner import run
from fedrun.simulation.sampling import SAMPLERS
from fedrun.config.specs import read
from conftest import compose_config

M = 4
TINY = [
    f"num_clients={M}", "data.dim=3", "data.num_classes=3", "data.mean_samples=12", "data.sigma=0.5",
    "model.zero_init=false", "local_epochs=2", "batch_size=5", "lr=0.2", "lr_decay=0.9",
    "weight_decay=0.01", "clip_norm=0.8", "participation=0.6", "progress=false",
]


def partial_seed(rounds: int = 2, p: float = 0.6) -> int:
    """A seed whose first rounds have different active sets of 2 or 3 of the 4 clients (so sums
    over several clients, inactive clients and ids that differ from list positions all occur)."""
    for seed in range(200):
        sets = [SAMPLERS["bernoulli"](M, p, seed, r).tolist() for r in range(1, rounds + 1)]
        if all(2 <= len(s) < M for s in sets) and len({tuple(s) for s in sets}) == rounds and all(s != list(range(len(s))) for s in sets):
            return seed
    raise AssertionError("no suitable seed")


SEED = partial_seed()


def tiny(*overrides: str, seed: int = SEED):
    return build(compose_config(*TINY, f"seed={seed}", *overrides))


# ---------------------------------------------------------------- independent reference code


class Reference:
    """Plain reimplementation of local training and of the active sets, from the experiment's data."""

    def __init__(self, exp):
        self.exp = exp
        self.cfg = OmegaConf.create(exp.spec.config)  # the resolved config the run was built from
        self.sizes = torch.tensor([len(p) for p in exp.partition], dtype=torch.float64)
        self.weights = (self.sizes * M / self.sizes.sum()).float()  # w_k = n_k m / N
        self.theta = exp.theta.clone()

    def lr(self, r: int) -> float:
        return float(self.cfg.lr) * float(self.cfg.lr_decay) ** (r - 1)

    def active(self, r: int) -> list[int]:
        return SAMPLERS["bernoulli"](M, float(self.cfg.participation), int(self.cfg.seed), r).tolist()

    def train(self, k: int, r: int, extra=None, decay: float = 0.0, steps: int | None = None) -> torch.Tensor:
        """Client k's local SGD from self.theta in round r: CE + extra(w), clip, SGD(weight_decay)."""
        cfg = self.cfg
        module = copy.deepcopy(self.exp.model.module)
        vector_to_parameters(self.theta.clone(), module.parameters())
        opt = torch.optim.SGD(module.parameters(), lr=self.lr(r), weight_decay=float(cfg.weight_decay) + float(decay))
        index = self.exp.partition[k]
        g_batch, _ = client_generators(int(cfg.seed), r, k)
        schedule = batch_schedule(len(index), int(cfg.local_epochs), int(cfg.batch_size), g_batch, steps)
        if steps is not None:
            assert len(schedule) == steps
        for local in schedule:
            rows = index[local]
            opt.zero_grad()
            loss = F.cross_entropy(module(self.exp.data.x_train[rows]), self.exp.data.y_train[rows])
            if extra is not None:
                loss = loss + extra(parameters_to_vector(module.parameters()))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), float(cfg.clip_norm))
            opt.step()
        return parameters_to_vector(module.parameters()).detach()


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 with the same operations in a different order (torch's clip over per-tensor norms,
    # SGD's in-place update): differences of a few ulps, amplified a little by the local steps.
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=2e-5, atol=2e-6)


def round_of(exp, clients, index: int = 1, lr: float = 0.1, steps=None):
    """The frozen round the runner would hand the algorithm (after training when ``steps`` is given)."""
    rnd = open_round(exp.algorithm, exp.ctx, exp.const, exp.store, index, lr, exp.spec.schedule.lr, exp.theta, clients)
    return rnd if steps is None else rnd.finished(clients, steps, {})


def fedrun_rounds(exp, rounds: int = 2) -> None:
    for r in range(1, rounds + 1):
        run_round(exp, r)


# ---------------------------------------------------------------- two rounds against the written-out update


def test_feddyn_reference_form_two_rounds():
    alpha = 0.3
    exp = tiny("algo=feddyn", f"algo.alpha={alpha}")
    ref = Reference(exp)
    assert len(set(ref.sizes.tolist())) > 1, "unequal sizes make alpha_k = alpha / w_k matter"
    P = exp.model.num_params
    s = torch.zeros(M, P)  # s_k = -g_k / alpha_k
    for r in (1, 2):
        active = ref.active(r)
        new = {}
        for k in active:
            a_k = alpha / float(ref.weights[k])
            lin = a_k * (s[k] - ref.theta)
            new[k] = ref.train(k, r, extra=lambda w, lin=lin: torch.sum(w * lin), decay=a_k)
        for k in active:
            s[k] = s[k] + (new[k] - ref.theta)
        ref.theta = torch.stack([new[k] for k in active]).mean(0) + s.mean(0)
        run_round(exp, r)
        close(exp.theta, ref.theta)
        close(exp.store.tables["s"], s)
        close(exp.server["s_mean"], s.mean(0))


def test_feddyn_paper_form_two_rounds():
    alpha = 0.3
    exp = tiny("algo=feddyn_paper", f"algo.alpha={alpha}")
    ref = Reference(exp)
    P = exp.model.num_params
    g = torch.zeros(M, P)
    h = torch.zeros(P)
    for r in (1, 2):
        active = ref.active(r)
        new = {}
        for k in active:
            theta_prev, g_k = ref.theta.clone(), g[k].clone()
            # L_k(w) - <g_k, w> + alpha/2 ||w - theta^{t-1}||^2, quadratic inside the loss (clipped)
            extra = lambda w, g_k=g_k, t=theta_prev: -torch.sum(g_k * w) + alpha / 2 * torch.sum((w - t) ** 2)
            new[k] = ref.train(k, r, extra=extra)
        for k in active:
            g[k] = g[k] - alpha * (new[k] - ref.theta)
        h = h - alpha / M * sum(new[k] - ref.theta for k in active)
        ref.theta = torch.stack([new[k] for k in active]).mean(0) - h / alpha
        run_round(exp, r)
        close(exp.theta, ref.theta)
        close(exp.store.tables["g"], g)
        close(exp.server["h"], h)
    assert "s" not in exp.store


def test_feddyn_variants_agree_on_balanced_data_without_clip():
    """alpha_k = alpha when sizes are equal, and without the clip it does not matter whether the
    quadratic is weight decay or in the loss: both forms compute the same models."""
    common = ("algo=feddyn", "algo.alpha=0.3", "data.sigma=0", "clip_norm=0", "weight_decay=0")
    a, b = tiny(*common), tiny("algo=feddyn_paper", *common[1:])
    fedrun_rounds(a, 3)
    fedrun_rounds(b, 3)
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-4, atol=1e-5)
    # h = mean of g over all clients = -alpha * mean of s
    torch.testing.assert_close(b.server["h"], -0.3 * a.server["s_mean"], rtol=1e-4, atol=1e-6)
    assert a.server["s_mean"].abs().max() > 1e-3, "the dynamic term is non-trivial"


def test_fedprox_two_rounds():
    mu = 0.5
    exp = tiny("algo=fedprox", f"algo.mu={mu}")
    ref = Reference(exp)
    for r in (1, 2):
        active = ref.active(r)
        theta_prev = ref.theta.clone()
        # the reference code's form: mu/2 ||w||^2 - mu <w, theta_g> (same gradient as mu/2 ||w - theta_g||^2)
        extra = lambda w: mu / 2 * torch.sum(w * w) - mu * torch.sum(w * theta_prev)
        new = torch.stack([ref.train(k, r, extra=extra) for k in active])
        n = ref.sizes[active].float()
        ref.theta = (n[:, None] * new).sum(0) / n.sum()
        run_round(exp, r)
        close(exp.theta, ref.theta)


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_scaffold_two_rounds(variant):
    exp = tiny("algo=scaffold" if variant == "reference" else "algo=scaffold_paper")
    ref = Reference(exp)
    P = exp.model.num_params
    N = float(ref.sizes.sum())
    K = exp.spec.local.epochs * math.ceil((N / M) / exp.spec.local.batch_size)
    # reference code: c scaled by w_k = n_k m / N, and the c_k update divides by the configured lr
    # even though round 2 trains with lr * lr_decay; Algorithm 1: unscaled c, this round's lr.
    weights = ref.weights if variant == "reference" else torch.ones(M)
    c_k = torch.zeros(M, P)
    c = torch.zeros(P)
    for r in (1, 2):
        active = ref.active(r)
        lr_c = exp.spec.schedule.lr if variant == "reference" else ref.lr(r)
        delta_c_sum = torch.zeros(P)
        new = {}
        for k in active:
            corr = -c_k[k] + c / float(weights[k])
            new[k] = ref.train(k, r, extra=lambda w, corr=corr: torch.sum(w * corr), steps=K)
            c_new = c_k[k] - c + (ref.theta - new[k]) / (K * lr_c)
            delta_c_sum += (c_new - c_k[k]) * float(weights[k])
            c_k[k] = c_new
        ref.theta = torch.stack([new[k] for k in active]).mean(0)
        c = c + delta_c_sum / M
        run_round(exp, r)
        close(exp.theta, ref.theta)
        close(exp.store.tables["c"], c_k)
        close(exp.server["c"], c)


def test_scaffold_same_K_steps_for_every_client():
    exp = tiny("algo=scaffold", "participation=1.0", "data.sigma=1.0")
    sizes = [len(p) for p in exp.partition]
    assert len(set(sizes)) > 1
    K = 2 * math.ceil(sum(sizes) / (M * 5))  # E * ceil((N/m)/B)
    captured = {}
    original = type(exp.algorithm).client_update

    def spy(self, rnd, server, thetas):
        captured["steps"] = rnd.steps.clone()
        return original(self, rnd, server, thetas)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(exp.algorithm), "client_update", spy)
        run_round(exp, 1)
    assert captured["steps"].tolist() == [K] * M
    own_epochs = [2 * math.ceil(n / 5) for n in sizes]
    assert own_epochs != [K] * M, "the fixed K differs from E passes over some client's own data"


@pytest.mark.parametrize("algo", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_two_rounds(algo):
    """Reddi et al. 2021, Algorithm 2: the three second-moment rules, m and the step shared."""
    lr_s, b1, b2, tau = 0.05, 0.8, 0.95, 0.01
    beta2 = [] if algo == "fedadagrad" else [f"algo.beta2={b2}"]
    exp = tiny(f"algo={algo}", f"algo.server_lr={lr_s}", f"algo.beta1={b1}", *beta2, f"algo.tau={tau}")
    ref = Reference(exp)
    P = exp.model.num_params
    m_t, v_t = torch.zeros(P), torch.full((P,), tau**2)
    for r in (1, 2):
        active = ref.active(r)
        delta = torch.stack([ref.train(k, r) - ref.theta for k in active]).mean(0)
        m_t = b1 * m_t + (1 - b1) * delta
        if algo == "fedadam":
            v_t = b2 * v_t + (1 - b2) * delta**2
        elif algo == "fedyogi":
            v_t = v_t - (1 - b2) * delta**2 * torch.sign(v_t - delta**2)
        else:
            v_t = v_t + delta**2
        ref.theta = ref.theta + lr_s * m_t / (v_t.sqrt() + tau)
        run_round(exp, r)
        close(exp.theta, ref.theta)
        close(exp.server["m"], m_t)
        close(exp.server["v"], v_t)


# ---------------------------------------------------------------- partial participation and state placement


@pytest.mark.parametrize("algo,table", [("feddyn", "s"), ("feddyn_paper", "g"), ("scaffold", "c")])
def test_inactive_state_untouched_and_rows_land_at_client_ids(algo, table):
    exp = tiny(f"algo={algo}")
    run_round(exp, 1)
    before = exp.store.tables[table].clone()
    assert before.abs().sum() > 0
    active = SAMPLERS["bernoulli"](M, 0.6, SEED, 2)
    captured = {}
    original = type(exp.algorithm).client_update

    def spy(self, rnd, server, thetas):
        out = original(self, rnd, server, thetas)
        captured["rows"] = out[table].clone()
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(exp.algorithm), "client_update", spy)
        run_round(exp, 2)
    after = exp.store.tables[table]
    inactive = [k for k in range(M) if k not in active.tolist()]
    assert inactive and active.tolist() != list(range(len(active)))
    for k in inactive:
        assert torch.equal(after[k], before[k]), f"inactive client {k}'s state changed"
    for a, k in enumerate(active.tolist()):
        assert torch.equal(after[k], captured["rows"][a]), f"active client {k}'s new state is not at row {k}"
        assert not torch.equal(after[k], before[k])


def test_client_update_reads_rows_by_client_id():
    """With distinct stored rows, the update of clients [1, 3] starts from rows 1 and 3."""
    exp = tiny("algo=feddyn")
    P = exp.model.num_params
    exp.store.tables["s"].copy_(torch.arange(M, dtype=torch.float32)[:, None].expand(M, P))
    clients = torch.tensor([1, 3])
    thetas = exp.theta[None].repeat(2, 1) + 0.5
    rnd = round_of(exp, clients, steps=torch.tensor([3, 3]))
    rows = exp.algorithm.client_update(rnd, exp.server, thetas)["s"]
    torch.testing.assert_close(rows, torch.tensor([[1.5], [3.5]]).expand(2, P))
    obj = exp.algorithm.local_objective(rnd, exp.server)
    alpha_k = 0.01 * exp.ctx.client_sizes.sum().item() / (M * exp.ctx.client_sizes[clients].float())
    expected = alpha_k[:, None] * (torch.tensor([[1.0], [3.0]]) - exp.theta[None])
    torch.testing.assert_close(obj.linear, expected.float())
    torch.testing.assert_close(obj.decay, alpha_k.float())


# ---------------------------------------------------------------- the regulariser's gradient flows


@pytest.mark.parametrize("algo", ["feddyn", "feddyn_paper", "fedprox", "scaffold"])
def test_regulariser_has_the_analytic_nonzero_gradient(algo):
    exp = tiny(f"algo={algo}", "algo.alpha=0.3" if algo.startswith("feddyn") else "participation=0.6")
    run_round(exp, 1)  # non-zero client and server state
    clients = torch.arange(M)
    obj = exp.algorithm.local_objective(round_of(exp, clients, index=2), exp.server)
    w = (exp.theta[None] + 0.1 * torch.randn(M, exp.model.num_params)).requires_grad_(True)
    (grad,) = torch.autograd.grad(obj.extra_loss(w), w)
    w, theta, store = w.detach(), exp.theta, exp.store.tables
    torch.testing.assert_close(obj.extra_grad(w), grad, rtol=1e-5, atol=1e-7)  # the engines' formula
    if algo == "feddyn":
        a_k = 0.3 / exp.ctx.weights
        expected = a_k[:, None] * (store["s"] - theta)  # the quadratic a_k w comes as weight decay
        torch.testing.assert_close(obj.decay, a_k)
    elif algo == "feddyn_paper":
        expected = -store["g"] + 0.3 * (w - theta)
    elif algo == "fedprox":
        expected = 1e-4 * (w - theta)
    else:
        expected = exp.server["c"] / exp.ctx.weights[:, None] - store["c"]
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    assert grad.abs().max() > 0


# ---------------------------------------------------------------- equivalences


def test_fedprox_mu0_is_fedavg_exactly():
    a, b = tiny("algo=fedprox", "algo.mu=0"), tiny("algo=fedavg")
    fedrun_rounds(a, 3)
    fedrun_rounds(b, 3)
    assert torch.equal(a.theta, b.theta)
    c = tiny("algo=fedprox", "algo.mu=0.5")
    fedrun_rounds(c, 3)
    assert not torch.allclose(c.theta, b.theta), "mu > 0 changes the result"


def test_fedadam_with_sgd_lr1_is_unweighted_fedavg():
    exp = tiny("algo=fedopt_sgd")
    assert exp.algorithm.server_lr == 1.0
    thetas = torch.randn(3, exp.model.num_params)
    new, _ = exp.algorithm.server_update(round_of(exp, torch.tensor([0, 2, 3])), exp.server, thetas, {})
    assert torch.equal(new, thetas.mean(0))
    # end to end on equal client sizes, where FedAvg's n_k-weighted mean is the unweighted one
    a, b = tiny("algo=fedopt_sgd", "data.sigma=0"), tiny("algo=fedavg", "data.sigma=0")
    fedrun_rounds(a, 3)
    fedrun_rounds(b, 3)
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-6, atol=1e-7)
    c = tiny("algo=fedadam", "data.sigma=0")
    fedrun_rounds(c, 3)
    assert not torch.allclose(c.theta, b.theta, atol=1e-4), "Adam differs from the plain mean"


@pytest.mark.parametrize("participation", [1.0, 0.6])
def test_scaffold_server_c_is_weighted_mean_of_client_c(participation):
    """c += Σ w_k (c_k⁺ - c_k)/m from zero keeps c = Σ_k w_k c_k / m = Σ n_k c_k / N (all clients);
    Algorithm 1's form keeps the plain mean."""
    exp = tiny("algo=scaffold", f"participation={participation}", "data.sigma=1.0")
    fedrun_rounds(exp, 3)
    w = exp.ctx.weights
    c_k = exp.store.tables["c"]
    assert c_k.abs().sum() > 0
    torch.testing.assert_close(exp.server["c"], (w[:, None] * c_k).sum(0) / M, rtol=1e-5, atol=1e-6)
    n = exp.ctx.client_sizes.float()
    torch.testing.assert_close(exp.server["c"], (n[:, None] * c_k).sum(0) / n.sum(), rtol=1e-5, atol=1e-6)
    paper = tiny("algo=scaffold_paper", f"participation={participation}", "data.sigma=1.0")
    fedrun_rounds(paper, 3)
    torch.testing.assert_close(paper.server["c"], paper.store.tables["c"].mean(0), rtol=1e-5, atol=1e-6)


def test_scaffold_server_lr():
    exp = tiny("algo=scaffold", "algo.server_lr=0.5")
    thetas = torch.randn(2, exp.model.num_params)
    rnd = round_of(exp, torch.tensor([1, 2]), steps=torch.tensor([4, 4]))
    rows = exp.algorithm.client_update(rnd, exp.server, thetas)
    new, _ = exp.algorithm.server_update(rnd, exp.server, thetas, rows)
    close(new, exp.theta + 0.5 * (thetas.mean(0) - exp.theta))


# ---------------------------------------------------------------- evaluation columns and communication


@pytest.mark.parametrize("algo", ["feddyn", "fedavg", "fedprox", "scaffold", "fedadam"])
def test_three_evaluated_models(algo):
    """Server model, mean of the active models, mean of every client's latest model, averaged as the
    reference code does: n_k-weighted for FedAvg and FedProx, plain for the others."""
    exp = tiny(f"algo={algo}")
    sizes = exp.ctx.client_sizes.double()
    assert sizes.min() < sizes.max(), "unbalanced clients, or weighted and plain means would coincide"
    weighted = algo in ("fedavg", "fedprox")

    def mean(rows, ids):
        if not weighted:
            return rows.double().mean(0).float()
        w = sizes[ids]
        return ((w[:, None] * rows.double()).sum(0) / w.sum()).float()

    latest = exp.theta[None].repeat(M, 1)  # never-active clients' latest model is the initial one
    for r in (1, 2):
        step = run_round(exp, r)
        active = SAMPLERS["bernoulli"](M, 0.6, SEED, r)
        latest[active] = step.client_thetas
        out = evaluate_round(exp, step.active_model)
        d = exp.data
        assert out["test_loss"] == pytest.approx(evaluate(exp.model, exp.theta, d.x_test, d.y_test)[0])
        torch.testing.assert_close(step.active_model, mean(step.client_thetas, active), rtol=1e-5, atol=1e-6)
        loss, acc = evaluate(exp.model, mean(step.client_thetas, active), d.x_test, d.y_test)
        assert (out["test_loss_active"], out["test_acc_active"]) == pytest.approx((loss, acc), rel=1e-5)
        loss, acc = evaluate(exp.model, mean(latest, torch.arange(M)), d.x_test, d.y_test)
        assert (out["test_loss_all"], out["test_acc_all"]) == pytest.approx((loss, acc), rel=1e-5)
        plain_all = evaluate(exp.model, latest.mean(0), d.x_test, d.y_test)[0]
        assert (out["test_loss_all"] != pytest.approx(plain_all, rel=1e-4)) == weighted  # the weighting shows
    if algo == "feddyn":
        assert out["test_loss"] != pytest.approx(out["test_loss_active"]), "FedDyn's server model is not the active mean"
    if weighted:
        torch.testing.assert_close(exp.theta, step.active_model)  # FedAvg's server model is its weighted mean


def test_evaluation_columns_switch_off():
    cfg = compose_config(*TINY, "eval_active=false", "eval_all=false")
    cols = metric_columns(read(cfg))
    assert "test_acc" in cols and not any(c.endswith(("_active", "_all")) for c in cols)
    exp = build(cfg)
    assert "_latest_delta" not in exp.store and exp.all_models is None


@pytest.mark.parametrize("algo,factor", [("fedavg", 1), ("feddyn", 1), ("fedprox", 1), ("fedadam", 1), ("scaffold", 2)])
def test_communication_accounting(tmp_path, algo, factor):
    cfg = compose_config(*TINY, f"seed={SEED}", f"algo={algo}", "rounds=3", "eval_every=1", "eval_active=false", "eval_all=false")
    run(cfg, tmp_path)
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    P = 3 * 3 + 3
    active = [len(SAMPLERS["bernoulli"](M, 0.6, SEED, r)) for r in (1, 2, 3)]
    assert metrics["active_clients"].tolist() == active
    expected_mb = [factor * a * P * 4 / 1e6 for a in active]
    assert metrics["uplink_mb"].tolist() == pytest.approx(expected_mb)
    assert metrics["downlink_mb"].tolist() == pytest.approx(expected_mb)
    assert metrics["comm_fedavg_rounds"].tolist() == pytest.approx([factor * r for r in (1, 2, 3)])


# ---------------------------------------------------------------- hyperparameter validation


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["algo=feddyn", "algo.alpha=0"], "algo.alpha"),
        (["algo=feddyn", "algo.alpha=-1"], "algo.alpha"),
        (["algo=feddyn_paper", "algo.alpha=-1"], "algo.alpha"),
        (["algo=fedprox", "algo.mu=-0.1"], "algo.mu"),
        (["algo=scaffold", "algo.server_lr=0"], "algo.server_lr"),
        (["algo=scaffold_paper", "algo.server_lr=-1"], "algo.server_lr"),
        (["algo=fedadam", "algo.beta1=1.0"], "algo.beta1"),
        (["algo=fedadam", "algo.beta2=-0.1"], "algo.beta2"),
        (["algo=fedadam", "algo.tau=0"], "algo.tau"),
        (["algo=fedyogi", "algo.beta2=1.0"], "algo.beta2"),
        (["algo=fedadagrad", "algo.tau=-1"], "algo.tau"),
        (["algo=fedopt_sgd", "algo.server_lr=0"], "algo.server_lr"),
    ],
)
def test_bad_hyperparameters_name_the_key(overrides, needle):
    with pytest.raises(FedrunError, match=needle.replace(".", r"\.")):
        tiny(*overrides)


def test_feddyn_is_the_default_algo():
    from fedrun.algorithms.feddyn import FedDyn

    exp = build(compose_config(*TINY))
    assert type(exp.algorithm) is FedDyn and exp.algorithm.alpha == 0.01


# ---------------------------------------------------------------- the interface's invariants


def test_algorithms_are_pure_and_frozen():
    """No algorithm module reads the state store; every algo option's hyperparameters are frozen."""
    import dataclasses
    from pathlib import Path

    import fedrun.algorithms as package
    from fedrun.config.schema import CONF_DIR

    for path in Path(package.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert "fedrun.state.store" not in source and "ClientStateStore" not in source, path.name
    for option in sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml")):
        algo = tiny(f"algo={option}").algorithm
        field = next(iter(dataclasses.fields(algo)), None)
        if field is not None:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(algo, field.name, getattr(algo, field.name))
