"""threads=null: chosen from the FLOPs of one local step (fedrun/simulation/threads.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import fedrun
from fedrun.errors import FedrunError
from conftest import build, compose_config
from fedrun.simulation.threads import PARALLEL_STEP_FLOPS, choose_threads, clients_per_step, step_flops


def test_the_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_threads(None, PARALLEL_STEP_FLOPS / 2, cpu) == 1
    assert choose_threads(None, PARALLEL_STEP_FLOPS, cpu) is None  # torch's default: all cores
    assert choose_threads(None, 1.0, cuda) is None and choose_threads(3, 1e12, cpu) == 3
    with pytest.raises(FedrunError, match="threads=0 is impossible"):
        choose_threads(0, 1.0, cpu)


def test_step_flops_of_the_synthetic_default():
    """Logistic regression 30 -> 5 (155 parameters): the counter sees the forward matmul, 2*30*5 = 300,
    and the weight gradient's, 300: 600 < 6 * 155 = 930, so 930 a sample. B=10, and the vectorised
    engine trains the expected 0.1 * 20 = 2 active clients per step: 930 * 10 * 2 = 18,600 FLOPs."""
    exp = build(compose_config())
    assert exp.model.num_params == 155 and clients_per_step(exp) == 2
    assert step_flops(exp) == 18_600
    sequential = build(compose_config("engine=sequential"))
    assert step_flops(sequential) == 9_300  # one client a step


def test_the_mnist_shaped_mlp_step_is_parallel():
    """784-200-200-10 (199,210 parameters): at least 6 * 199,210 FLOPs a sample; B=50 and 10 active
    clients: >= 5.98e8 FLOPs a step, far over the threshold; the same model with B=1 and one client
    (1.2e6) is under it."""
    exp = build(compose_config(*MNIST_SHAPED))
    assert exp.model.num_params == 199_210
    assert step_flops(exp) >= 6 * 199_210 * 50 * 10 > PARALLEL_STEP_FLOPS
    small = build(compose_config("model=mlp", "data.dim=784", "batch_size=1", "engine=sequential"))
    assert step_flops(small) < PARALLEL_STEP_FLOPS


MNIST_SHAPED = ["model=mlp", "data.dim=784", "data.num_classes=10", "num_clients=10", "participation=1.0", "batch_size=50", "data.mean_samples=100"]


def test_the_choice_is_a_function_of_the_config_not_of_the_machines_state():
    """FLOPs, not timings: the same config gets the same count whatever the load or the threads set now."""
    torch.set_num_threads(2)
    first = step_flops(build(compose_config(*MNIST_SHAPED)))
    torch.set_num_threads(1)
    assert step_flops(build(compose_config(*MNIST_SHAPED))) == first


def test_where_the_rule_picks_all_cores_the_vectorized_results_do_not_depend_on_the_count(tmp_path: Path):
    """The MNIST-shaped step (threads=null: torch's default) trained with 1 and with 2 threads: the same
    numbers bit for bit (wall time aside)."""
    base = ["algo=feddyn", *MNIST_SHAPED, "rounds=2", "local_epochs=1", "progress=false", "eval_all=false"]
    one = fedrun.run([*base, "threads=1"], run_dir=tmp_path / "one")
    two = fedrun.run([*base, "threads=2"], run_dir=tmp_path / "two")
    pd.testing.assert_frame_equal(one.drop(columns="wall_s"), two.drop(columns="wall_s"), check_exact=True)
    assert two.attrs["summary"]["threads_choice"]["rule"] == "threads=N"


def test_summary_records_the_choice(tmp_path: Path):
    auto = fedrun.run(["algo=fedavg", "num_clients=6", "rounds=1", "local_epochs=1", "progress=false"], run_dir=tmp_path / "a").attrs["summary"]
    assert auto["threads_choice"] == {"threads": 1, "flops_per_step": 930.0 * 10 * 1, "rule": "9.3e+03 FLOPs per local step < 1e+07"}
    assert auto["threads"] == 1
