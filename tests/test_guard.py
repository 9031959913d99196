"""The divergence guard on real runs: each blow-up of issue 15 stops in the round it happens, with
status ``diverged`` and no metrics row for that round; a healthy run whose round 1 was easy is not
stopped; a run that drops most of its clients round after round stops; summary.json stays JSON.

The reference is max(initial model's train loss, its test loss, log C). On the synthetic default
(5 classes, zero-initialised logistic regression) every logit starts at 0, so all three equal
log 5 = 1.609 and the limit is 100 x 1.609 = 160.9. Round 1's losses of the blow-ups (measured on
this data, seed 0): FedDyn lr=50 train 308; SCAFFOLD lr=50 clip_norm=0 train 145 < 160.9 but
server test loss 206; FedAvg lr=1000 clip_norm=0 train 3.3e3. A healthy run's losses stay below 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedrun import runner
from fedrun.simulation import guard
from fedrun.errors import DivergenceError
from conftest import build, compose_config
from tests.test_errors import inject

FAST = ["device=cpu", "progress=false", "eval_all=false", "eval_active=false"]


def diverge(tmp_path: Path, args: list[str]) -> tuple[DivergenceError, dict]:
    with pytest.raises(DivergenceError) as err:
        runner.run(compose_config(*FAST, *args), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no bare NaN
    return err.value, summary


@pytest.mark.parametrize(
    "args, algo, seen",
    [
        (["lr=50"], "FedDyn", "train loss"),
        (["algo=scaffold", "lr=50", "clip_norm=0"], "Scaffold", "server model's test loss"),
        (["algo=fedavg", "lr=1000", "clip_norm=0"], "FedAvg", "train loss"),
    ],
)
def test_blow_up_in_round_1_stops_in_round_1(tmp_path, args, algo, seen):
    err, summary = diverge(tmp_path, args)
    assert str(err).startswith(f"training diverged in round 1 (algo={algo}): the {seen} ")
    assert "times the reference 1.609" in str(err)
    assert summary["status"] == "diverged" and summary["rounds_done"] == 0
    assert summary["diverged"]["round"] == 1
    assert not (tmp_path / "metrics.csv").exists()  # the diverged round is no metrics row


def test_reference_is_the_initial_model_and_log_c():
    cfg = compose_config(*FAST)
    exp = build(cfg)
    assert guard.reference_loss(exp) == pytest.approx(math.log(5), rel=1e-6)  # zero init: uniform logits
    exp.theta.normal_(0, 3.0)  # a worse initial model raises the reference above log C
    assert guard.reference_loss(exp) > 2 * math.log(5)


@pytest.mark.parametrize("eval_every", [1, 2])
def test_stops_in_the_round_it_happens_even_between_evaluations(monkeypatch, tmp_path, eval_every):
    """A train loss over the limit in round 3 stops round 3, whether or not round 3 is evaluated;
    the rows of rounds 1-2 are written, round 3's is not."""
    inject(monkeypatch, lambda r: r == 3, lambda res, r: res.loss.fill_(1e3))
    err, summary = diverge(tmp_path, ["num_clients=5", "data.mean_samples=30", "participation=1.0", "rounds=6", f"eval_every={eval_every}"])
    assert "round 3 " in str(err) and summary["diverged"]["train_loss"] == 1e3
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == ([1, 2] if eval_every == 1 else [2])


def test_healthy_fedavg_on_paper_synthetic_seed_4_is_not_stopped(tmp_path):
    """Issue 15's false alarm: round 1's only active client holds one class (train loss near 0);
    against round 1 a normal later loss looked 100x too big. Against the reference it does not."""
    cfg = compose_config(*FAST, "experiment=paper_synthetic", "algo=fedavg", "seed=4", "rounds=40")
    summary = runner.run(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["rounds_done"] == 40


def test_dropping_most_clients_round_after_round_stops(monkeypatch, tmp_path):
    """on_nonfinite=drop with every client non-finite in every round: rounds 1 and 2 change nothing,
    round 3 (the third in a row) stops; summary.json's train loss is null, not NaN."""
    inject(monkeypatch, lambda r: True, lambda res, r: res.loss.fill_(float("nan")))
    err, summary = diverge(tmp_path, ["num_clients=5", "data.mean_samples=30", "participation=1.0", "on_nonfinite=drop"])
    assert str(err).startswith("training diverged in round 3 (algo=FedDyn): on_nonfinite=drop left out more than half")
    assert summary["status"] == "diverged" and summary["diverged"]["dropped_clients"] == 5
    assert summary["final_train_loss"] is None
    assert "NaN" not in (tmp_path / "summary.json").read_text()


def test_guard_spec_is_frozen_and_names_the_knobs():
    from fedrun.config import specs

    spec = specs.read(compose_config("algo=fedprox")).guard
    assert spec.algo == "FedProx" and spec.advice() == "lower lr=0.1 (or algo.mu=0.0001)"
    with pytest.raises(Exception):
        spec.lr = 1.0  # type: ignore[misc]
    assert torch.isfinite(torch.tensor(spec.divergence_factor))
