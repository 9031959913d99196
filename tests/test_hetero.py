"""Device heterogeneity (``hetero=``, fedrun/engines/hetero.py): draws, engines, FedNova, resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedrun.algorithms.base import FedContext, Round
from fedrun.algorithms.fednova import FedNova
from fedrun.engines.hetero import Speeds, Stragglers, UniformEpochs, Work, discard, nominal_steps
from fedrun.simulation.guard import Screened
from fedrun.simulation.round import run_round
from conftest import build
from conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# 6 devices of exactly 20 samples (synthetic sigma=0), all active, B=10: E·⌈20/10⌉ = 2E nominal steps.
SIX = [
    "num_clients=6", "participation=1.0", "sampling=fixed", "data.mean_samples=20", "local_epochs=4",
    "batch_size=10", "lr=0.02", "progress=false", "eval_all=false",
]
MODES = ["hetero=uniform_epochs", "hetero=stragglers", "hetero=stragglers hetero.drop=true", "hetero=speeds"]


class Spy:
    """Wraps an engine and keeps each round's LocalResult."""

    def __init__(self, engine):
        self.engine, self.results = engine, []

    def train(self, *args, **kwargs):
        self.results.append(self.engine.train(*args, **kwargs))
        return self.results[-1]


def spied(overrides: list[str]):
    exp = build(compose_config(*overrides))
    exp.engine = Spy(exp.engine)
    return exp


def test_uniform_epochs_draws_listed_and_taken() -> None:
    """Seed 0, E=4, six active clients: round 1 draws epochs [3, 2, 3, 4, 2, 3] and round 2
    [2, 4, 1, 3, 2, 1] (torch.randint(1, 5, (6,)) from generator(0, "hetero", r)). Each client has
    20 samples and B=10, so it takes 2·e_k steps: [6, 4, 6, 8, 4, 6] and [4, 8, 2, 6, 4, 2]."""
    assert UniformEpochs().epochs_of(6, 4, 0, 1).tolist() == [3, 2, 3, 4, 2, 3]
    assert UniformEpochs().epochs_of(6, 4, 0, 2).tolist() == [2, 4, 1, 3, 2, 1]
    for engine in ("sequential", "vectorized"):
        exp = spied(SIX + ["hetero=uniform_epochs", f"engine={engine}"])
        rec1, rec2 = run_round(exp, 1), run_round(exp, 2)
        assert exp.engine.results[0].steps.tolist() == [6, 4, 6, 8, 4, 6]
        assert exp.engine.results[1].steps.tolist() == [4, 8, 2, 6, 4, 2]
        assert rec1.mean_local_steps == 34 / 6 and rec2.mean_local_steps == 26 / 6


def test_uniform_epochs_bounds_and_bad_range() -> None:
    """low=high=2 gives every client exactly 2 epochs; low > high is one sentence naming the keys."""
    assert UniformEpochs(low=2, high=2).work(torch.tensor([8, 4, 12]), torch.arange(3), 4, 0, 1).steps.tolist() == [4, 2, 6]
    with pytest.raises(Exception, match="hetero.low"):
        UniformEpochs(low=5).epochs_of(3, 4, 0, 1)


def test_stragglers_listed_draws() -> None:
    """Seed 0, round 1, six clients, fraction 0.5, min_work 0.25: clients 0, 2, 4 straggle with shares
    0.8416, 0.4595, 0.2969 (0.25 + 0.75·uniform); of 8 nominal steps they take ⌊8·s⌋ = 6, 3, 2."""
    s = Stragglers(fraction=0.5, min_work=0.25)
    mask, share = s.draws(6, 0, 1)
    assert mask.tolist() == [True, False, True, False, True, False]
    w = s.work(torch.full((6,), 8), torch.arange(6), 4, 0, 1)
    assert w.steps.tolist() == [6, 8, 3, 8, 2, 8]
    assert not w.dropped.any()
    assert Stragglers(fraction=0.5, min_work=0.25, drop=True).work(torch.full((6,), 8), torch.arange(6), 4, 0, 1).dropped.tolist() == mask.tolist()


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), fraction=st.floats(0, 1), min_work=st.floats(0, 0.99), nominal=st.integers(1, 50),
       seed=st.integers(0, 1000), rnd=st.integers(1, 1000))
def test_stragglers_properties(count, fraction, min_work, nominal, seed, rnd) -> None:
    """Exactly round(fraction·A) stragglers; each does 1 <= steps <= nominal (at least ⌊min_work·τ⁰⌋),
    the others exactly nominal."""
    w = Stragglers(fraction=fraction, min_work=min_work).work(torch.full((count,), nominal), torch.arange(count), 2, seed, rnd)
    slow = w.steps < nominal
    mask, _ = Stragglers(fraction=fraction, min_work=min_work).draws(count, seed, rnd)
    assert int(mask.sum()) == math.floor(fraction * count + 0.5)
    assert not (slow & ~mask).any()
    assert bool((w.steps[mask] >= max(1, math.floor(min_work * nominal))).all()) and bool((w.steps >= 1).all())


def test_speeds_fixed_per_client_and_independent_of_the_active_set() -> None:
    """v_k = exp(sigma·z_k) from client k's own stream: the same in every round and whoever else is
    active; sigma=0 gives everyone the nominal steps; steps = round(v_k·τ⁰_k), at least 1."""
    s = Speeds(sigma=0.5)
    both = s.speeds_of(torch.tensor([3, 7]), 5)
    assert s.speeds_of(torch.tensor([7]), 5).item() == both[1].item()
    nominal = torch.tensor([10, 10])
    assert s.work(nominal, torch.tensor([3, 7]), 2, 5, 1).steps.tolist() == s.work(nominal, torch.tensor([3, 7]), 2, 5, 9).steps.tolist()
    assert s.work(nominal, torch.tensor([3, 7]), 2, 5, 1).steps.tolist() == torch.round(both * 10).long().clamp(min=1).tolist()
    assert Speeds(sigma=0.0).work(nominal, torch.tensor([3, 7]), 2, 5, 1).steps.tolist() == [10, 10]


def test_nominal_steps() -> None:
    """E·⌈n/B⌉ without fixed steps (n = 20, 21, 1; B = 10; E = 3 -> 6, 9, 3); the algorithm's own otherwise."""
    assert nominal_steps(None, torch.tensor([20, 21, 1]), 3, 10).tolist() == [6, 9, 3]
    assert nominal_steps(torch.tensor([5, 5]), torch.tensor([20, 21]), 3, 10).tolist() == [5, 5]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("algo", ["fedavg", "feddyn", "scaffold", "fednova"])
def test_engines_agree_under_every_mode(mode: str, algo: str) -> None:
    """Both engines take the same steps per client and reach the same models after two rounds."""
    base = SIX + ["partition=unbalanced", f"algo={algo}", *mode.split()]
    seq, vec = spied(base + ["engine=sequential"]), spied(base + ["engine=vectorized"])
    for r in (1, 2):
        run_round(seq, r), run_round(vec, r)
    for a, b in zip(seq.engine.results, vec.engine.results):
        assert a.steps.tolist() == b.steps.tolist()
    torch.testing.assert_close(vec.theta, seq.theta, rtol=1e-4, atol=1e-5)
    for name, table in seq.store.items():
        torch.testing.assert_close(vec.store.tables[name], table, rtol=1e-4, atol=1e-5)


def test_scaffold_fixed_k_is_scaled_per_client() -> None:
    """SCAFFOLD's fixed K (E·⌈N/(mB)⌉ = 4·2 = 8 here) is what hetero scales: with the listed epochs
    [3, 2, 3, 4, 2, 3] of E=4 each client takes K·e_k/E = [6, 4, 6, 8, 4, 6] steps."""
    exp = spied(SIX + ["algo=scaffold", "hetero=uniform_epochs"])
    run_round(exp, 1)
    assert exp.engine.results[0].steps.tolist() == [6, 4, 6, 8, 4, 6]


def test_fednova_aggregate_under_unequal_steps_by_hand() -> None:
    """θ = 0 (P = 1), two clients, n = 1 and 3 (p = 1/4, 3/4), τ = 1 and 3 steps, θ_1 = 1, θ_2 = 6.
    τ_eff = 1/4·1 + 3/4·3 = 2.5; normalised mean Σ p_k (θ_k − θ)/τ_k = 1/4·1 + 3/4·2 = 1.75;
    θ⁺ = θ + τ_eff·1.75 = 4.375 (FedAvg's n_k-weighted mean would be 4.75)."""
    ctx = FedContext(2, 1, torch.tensor([1, 3]), 10, 1, torch.device("cpu"))
    rnd = Round(1, 0.1, 0.1, torch.zeros(1), torch.tensor([0, 1]), {}, torch.tensor([1, 3]), ctx.weights, ctx,
                steps=torch.tensor([1, 3]))
    theta, _ = FedNova().server_update(rnd, {}, torch.tensor([[1.0], [6.0]]), {})
    assert theta.item() == pytest.approx(4.375, abs=1e-6)


def test_fednova_normalises_by_the_steps_taken_in_a_run(monkeypatch) -> None:
    """In a run, FedNova's server sees the steps each client really took under hetero."""
    exp = spied(SIX + ["algo=fednova", "hetero=uniform_epochs"])
    seen = []
    original = type(exp.algorithm).server_update
    monkeypatch.setattr(type(exp.algorithm), "server_update", lambda self, rnd, *a: (seen.append(rnd.steps.tolist()), original(self, rnd, *a))[1])
    run_round(exp, 1)
    assert seen == [[6, 4, 6, 8, 4, 6]]


def test_drop_discards_stragglers_updates() -> None:
    """hetero.drop=true: FedAvg's new server model is the n_k-weighted mean of the non-stragglers'
    models alone (clients 0, 2, 4 straggle in round 1 at seed 0), and they are counted."""
    exp = spied(SIX + ["algo=fedavg", "hetero=stragglers", "hetero.drop=true"])
    rec = run_round(exp, 1)
    thetas = exp.engine.results[0].thetas
    assert rec.straggler_drops == 3
    torch.testing.assert_close(exp.theta, thetas[[1, 3, 5]].mean(0))  # equal sizes: a plain mean


def test_discard_keeps_rows_aligned() -> None:
    kept = Screened(torch.tensor([1, 4, 6]), torch.tensor([[1.0], [4.0], [6.0]]), torch.tensor([0.1, 0.4, 0.6]), torch.tensor([1, 4, 6]), 0)
    """Active 1, 3, 4, 6; the guard already left out 3; stragglers 3 and 4 are discarded: 1 and 6 stay,
    and only 4 counts as a straggler drop (3 was gone already)."""
    work = Work(torch.tensor([1, 2, 3, 4]), torch.tensor([False, True, True, False]))
    out, n = discard(kept, torch.tensor([1, 3, 4, 6]), work)
    assert n == 1 and out.clients.tolist() == [1, 6] and out.thetas[:, 0].tolist() == [1.0, 6.0]
    assert out.steps.tolist() == [1, 6]


def test_hetero_none_adds_no_columns_and_others_do() -> None:
    from fedrun.simulation.round import metric_columns
    from fedrun.config.specs import read

    assert "mean_local_steps" not in metric_columns(read(compose_config(*SIX)))
    assert "mean_local_steps" in metric_columns(read(compose_config(*SIX, "hetero=speeds")))
    assert "straggler_drops" in metric_columns(read(compose_config(*SIX, "hetero=stragglers", "hetero.drop=true")))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("mode", ["hetero=uniform_epochs", "hetero=stragglers hetero.drop=true", "hetero=speeds"])
def test_resume_under_hetero_is_exact(mode: str, tmp_path: Path) -> None:
    """Two rounds, keep the checkpoint, continue to four: the same rows as four rounds straight."""
    from fedrun.runner import run

    base = SIX + ["algo=scaffold", "checkpoint_every=0", *mode.split()]
    run(compose_config(*base, "rounds=4"), tmp_path / "straight")
    run(compose_config(*base, "rounds=2", "keep_checkpoint=true"), tmp_path / "split")
    run(compose_config(*base, "rounds=4"), tmp_path / "split")
    straight = _rows(tmp_path / "straight" / "metrics.csv")
    assert len(straight) == 4 and "mean_local_steps" in straight[0]
    assert _rows(tmp_path / "split" / "metrics.csv") == straight
