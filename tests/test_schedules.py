"""Learning-rate schedules (``lr_schedule=``, fedrun/config/specs.py ``Schedule``) and the fednova_authors preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fedrun
from fedrun.config.checks import validate
from fedrun.errors import FedrunError
from conftest import compose_config
from fedrun.config.specs import Schedule, read


def test_multistep_drops_at_the_authors_rounds():
    """FedNova's update_learning_rate, 0-based round rnd: lr/10 from int(R/2), lr/100 from int(0.75 R).
    R=8: from 0-based 4 and 6, i.e. rounds 5 and 7. R=10: int(5)=5 and int(7.5)=7, i.e. rounds 6 and 8."""
    s8 = Schedule(0.1, 1.0, "multistep", 8, (0.5, 0.75), 0.1)
    assert [s8.lr_at(r) for r in range(1, 9)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2, rel=1e-12)
    s10 = Schedule(0.1, 1.0, "multistep", 10, (0.5, 0.75), 0.1)
    assert [s10.lr_at(r) for r in range(1, 11)] == pytest.approx([0.1] * 5 + [0.01] * 2 + [0.001] * 3, rel=1e-12)


def test_cosine_is_torchs_cosine_annealing_stepped_once_a_round():
    rounds, lr = 7, 0.3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=rounds)
    expected = []
    for _ in range(rounds):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = Schedule(lr, 1.0, "cosine", rounds)
    assert [ours.lr_at(r) for r in range(1, rounds + 1)] == pytest.approx(expected, rel=1e-12)
    assert ours.lr_at(1) == lr and ours.lr_at(rounds // 2 + 1) < lr  # starts at lr, decays


def test_exponential_stays_the_default_and_lr_decay():
    spec = read(compose_config("lr=0.2", "lr_decay=0.5", "rounds=4"))
    assert spec.schedule.kind == "exponential"
    assert [spec.schedule.lr_at(r) for r in (1, 2, 3)] == [0.2, 0.1, 0.05]


@pytest.mark.parametrize("overrides,needle", [
    (["lr_schedule=cosine", "lr_decay=0.9"], "lr_decay=0.9 only applies to lr_schedule=exponential"),
    (["lr_schedule=multistep", "lr_milestones=[0.75,0.5]"], "lr_milestones=[0.75, 0.5] is not valid"),
    (["lr_schedule=multistep", "lr_milestones=[1.5]"], "lr_milestones=[1.5] is not valid"),
    (["lr_schedule=multistep", "lr_factor=0"], "lr_factor=0"),
])
def test_bad_schedules_are_one_sentence(overrides, needle):
    with pytest.raises(FedrunError) as err:
        validate(compose_config(*overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_run_trains_each_round_at_the_scheduled_lr(tmp_path: Path):
    df = fedrun.run(["algo=fedavg", "num_clients=4", "rounds=4", "local_epochs=1", "progress=false",
                     "lr_schedule=multistep", "lr_milestones=[0.5]", "lr_factor=0.5"], run_dir=tmp_path / "r")
    assert df["lr"].tolist() == [0.1, 0.1, 0.05, 0.05]  # int(0.5 * 4) = 2: from 0-based round 2 (round 3) on


def test_fednova_authors_preset():
    cfg = compose_config("experiment=fednova_authors", "rounds=200")
    spec = read(cfg)
    assert cfg.algo._target_.endswith("FedNova") and spec.local.weight_decay == 1e-4 and spec.local.clip_norm == 0
    lrs = [spec.schedule.lr_at(r) for r in (1, 100, 101, 150, 151, 200)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)
