"""Bad input gets one sentence (exit != 0, no traceback, no run dir left behind); the divergence
guard stops (or drops clients) with a message naming round, algorithm and hyperparameters; the same
config and seed give identical metrics; checkpoint helpers (config diff, corruption).

Command-line cases call ``fedrun.cli.main.main()`` in this process (the full Hydra path and exit codes,
without paying for a new interpreter; tests/test_cli.py runs the real console entry point).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from fedrun import runner
from fedrun.rundir import checkpoint, resume
from fedrun.cli import main as cli
from fedrun.config.schema import CONF_DIR
from fedrun.errors import DivergenceError, FedrunError
from fedrun.config.specs import read_resume
from conftest import compose_config

TINY = ["num_clients=5", "rounds=4", "local_epochs=1", "data.mean_samples=30", "participation=0.6", "device=cpu", "progress=false"]


pytestmark = pytest.mark.usefixtures("restore_logging")


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def cli_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, cwd: Path, args: list[str]) -> tuple[int, str]:
    """Run ``fedrun <args>`` in-process from ``cwd``; returns (exit code, the one stderr line)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["fedrun", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("fedrun: error: "), err
    return int(exc.value.code), lines[0][len("fedrun: error: "):]


# (arguments, pieces the one sentence must contain)
COMPOSE_ERRORS = [
    (["algo=fedx"], ["algo=fedx is not an option of algo", "fedavg", "feddyn", "scaffold"]),
    (["partition=random"], ["partition=random is not an option", "dirichlet", "iid", "shards"]),
    (["lrr=0.1"], ["lrr is not a config key", "did you mean lr?"]),
    (["algo=feddyn", "algo.alpah=0.1"], ["algo.alpah is not a key of algo=feddyn", "did you mean algo.alpha?"]),
    (["partition=iid", "partition.alpha=0.3"], ["partition.alpha is not a key of partition=iid"]),
    (["+foo=1"], ["foo is not a config key fedrun uses"]),
    (["lr=abc"], ["lr=abc has the wrong type", "takes a number"]),
    (["num_clients=2.5"], ["num_clients=2.5 has the wrong type", "whole number"]),
    (["eval_active=maybe"], ["eval_active=maybe has the wrong type", "true or false"]),
    (["device=gpu"], ["device=gpu is not valid", "auto, cpu, cuda"]),
    (["sampling=random"], ["sampling=random is not valid", "bernoulli, fixed"]),
    (["on_nonfinite=ignore"], ["on_nonfinite=ignore is not valid", "stop, drop"]),
    (["precision=fp16"], ["precision=fp16 is not valid: use one of fp32, tf32, bf16"]),
    (["lr=="], ["cannot read the override 'lr=='"]),
    (["participation=1.5"], ["participation=1.5 is out of range"]),
    (["lr=-0.1"], ["lr=-0.1 is not a positive number"]),
    (["rounds=0"], ["rounds=0 is impossible"]),
    (["checkpoint_every=-1"], ["checkpoint_every=-1 is negative"]),
    (["divergence_factor=0.5"], ["divergence_factor=0.5 is out of range"]),
    (["resume=sometimes"], ["resume=sometimes is not valid"]),
    (["-m", "algo=fedavg,fedx"], ["algo=fedx is not an option of algo"]),
    (["-m", "lr=0.1,abc"], ["lr=abc has the wrong type"]),
    (["-m", "participation=0.1,2"], ["participation=2.0 is out of range"]),
    (["resume=true"], ["resume=true found no checkpoint or finished run of this config"]),
    (["~lr"], ["lr was removed from the config (~lr)"]),
    (["lr=null"], ["lr cannot be null"]),
    (["algo=null"], ["algo=null is not an option: use one of fedadagrad, fedadam, fedavg"]),
    (["rounds=abc", "rounds=3"], ["rounds=abc has the wrong type"]),
    (["data.foo.bar=1"], ["data.foo is not a key of data=synthetic: data=synthetic has keys: alpha, beta, dim"]),
    (["hydra.run.dirr=x"], ["hydra.run.dirr is not a key of hydra.run: did you mean hydra.run.dir?"]),
]


@pytest.mark.parametrize("args,pieces", COMPOSE_ERRORS, ids=[" ".join(a) for a, _ in COMPOSE_ERRORS])
def test_bad_override_is_one_sentence_before_any_run_dir(args, pieces, monkeypatch, capsys, tmp_path):
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, *args])
    assert code == 2
    for piece in pieces:
        assert piece in sentence
    assert sentence.endswith(".")
    assert files_under(tmp_path) == []  # Hydra was never started: no run dir, no log


def test_unwritable_output_dir(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={blocker}/run"])
    assert code == 2 and f"{blocker} is a file" in sentence and "hydra.run.dir" in sentence
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, ["-m", "lr=0.1,0.2", f"hydra.sweep.dir={blocker}/sweep"])
    assert code == 2 and "hydra.sweep.dir" in sentence
    assert files_under(tmp_path) == [blocker]


def test_shards_that_do_not_divide(monkeypatch, capsys, tmp_path):
    # synthetic data: 5 clients x 30 samples = 150; 5 * 4 shards = 20 does not divide 150
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, "partition=shards", "partition.shards_per_client=4"])
    assert code == 2 and "equal shards" in sentence and "divides 150" in sentence
    assert files_under(tmp_path / "outputs") == []  # the run dir Hydra made is removed


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    if not (CONF_DIR / "data" / "mnist.yaml").exists():
        pytest.skip("conf/data/mnist.yaml does not exist yet")
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from vision_files import write_mnist
    finally:
        sys.path.pop(0)
    root = tmp_path / "data"
    write_mnist(root, n_train=12, n_test=6)
    return root


MNIST = ["data=mnist", "data.download=false", "rounds=1", "local_epochs=1", "device=cpu", "progress=false"]


def test_more_clients_than_samples(monkeypatch, capsys, tmp_path, mnist_root):
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*MNIST, f"data.root={mnist_root}", "num_clients=20", "partition=iid"])
    assert code == 2 and "num_clients=20 is more than the 12 training samples" in sentence
    assert files_under(tmp_path / "outputs") == []


def test_missing_dataset_files(monkeypatch, capsys, tmp_path, mnist_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*MNIST, f"data.root={empty}", "num_clients=4"])
    assert code == 2 and sentence.startswith("data=mnist: MNIST was not found in") and "data.download=true" in sentence
    assert files_under(tmp_path / "outputs") == []


def test_corrupt_dataset_file(monkeypatch, capsys, tmp_path, mnist_root):
    labels = mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:10])  # truncated
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*MNIST, f"data.root={mnist_root}", "num_clients=4"])
    assert code == 2 and sentence.startswith("data=mnist: the MNIST files in ") and "truncated or corrupt" in sentence
    assert files_under(tmp_path / "outputs") == []


def test_resume_with_a_different_config_is_refused(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(*TINY, "algo=feddyn", "rounds=6", "checkpoint_every=2")
    stop_after(cfg, run_dir, 3)  # leaves a checkpoint of round 2
    before = sorted(p.name for p in files_under(run_dir))
    code, sentence = cli_error(
        monkeypatch, capsys, tmp_path,
        [*TINY, "algo=feddyn", "rounds=6", "checkpoint_every=2", "lr=0.05", "algo.alpha=0.1", f"hydra.run.dir={run_dir}"],
    )
    assert code == 2
    assert sentence.startswith(f"cannot resume {run_dir}: it was run with a different config (algo.alpha (0.01 there, 0.1 now), lr (0.1 there, 0.05 now))")
    assert sorted(p.name for p in files_under(run_dir)) == before  # nothing touched (no .hydra/ either)
    # keys that change no result (checkpoint_every, progress) do not block a resume
    same = read_resume(compose_config(*TINY, "algo=feddyn", "rounds=6", "checkpoint_every=5", "progress=true"))
    assert resume.decide(same, run_dir, clear=False)["round"] == 2


def test_corrupt_checkpoint(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x00not a checkpoint")
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={run_dir}"])
    assert code == 2 and f"checkpoint.pt in {run_dir} is damaged: it cannot be read" in sentence and "resume=false" in sentence
    assert (run_dir / "checkpoint.pt").exists()  # the user's dir is left as it was


def test_finished_run_is_not_redone(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(*TINY, "algo=fedavg")
    runner.run(cfg, run_dir)
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedrun", *TINY, "algo=fedavg", f"hydra.run.dir={run_dir}"])
    cli.main()  # returns: exit 0
    assert "already holds a finished run of this config" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    # resume=true without a dir finds it among the runs of the same data and algo
    assert resume.find_resumable(read_resume(compose_config(*TINY, "algo=fedavg", "resume=true")), tmp_path) == run_dir
    assert resume.find_resumable(read_resume(compose_config(*TINY, "algo=fedavg", "seed=3")), tmp_path) is None


def test_divergence_end_to_end(monkeypatch, capsys, tmp_path):
    """A real exploding run (huge lr, no clipping) through the command: exit 3, one sentence, status diverged."""
    run_dir = tmp_path / "run"
    code, line = cli_error(monkeypatch, capsys, tmp_path, [*TINY, "algo=feddyn", "lr=1000", "clip_norm=0", "rounds=6", f"hydra.run.dir={run_dir}"])
    assert code == 3
    assert line.startswith("training diverged in round ")
    assert "algo=FedDyn" in line and "lower lr=1000.0" in line and "algo.alpha=0.01" in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


# ---------------------------------------------------------------------------------------------
# divergence guard, in process


def stop_after(cfg, run_dir: Path, rounds: int) -> None:
    """Run ``cfg`` but raise after ``rounds`` rounds (as a crash would)."""
    original = runner.run_round

    def crash(exp, r):
        if r > rounds:
            raise RuntimeError("simulated crash")
        return original(exp, r)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_round", crash)
        with pytest.raises(RuntimeError):
            runner.run(cfg, run_dir)


def inject(monkeypatch, when: Callable[[int], bool], change: Callable[[object, int], None]) -> None:
    """Make the engine's result of the rounds where ``when(round)`` is true pass through ``change``."""
    original_build = runner.build

    def build(*args, **kwargs):
        exp = original_build(*args, **kwargs)
        original = exp.engine.train

        def train(*targs):
            result = original(*targs)
            if when(targs[-1]):
                change(result, targs[-1])
            return result

        exp.engine.train = train
        return exp

    monkeypatch.setattr(runner, "build", build)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_nonfinite_client_stops_with_round_algo_and_hyperparameters(monkeypatch, tmp_path):
    def poison(result, r):
        result.thetas[0, 0] = float("nan")

    inject(monkeypatch, lambda r: r == 2, poison)
    with pytest.raises(DivergenceError) as err:
        runner.run(compose_config(*TINY, "algo=feddyn"), tmp_path)
    msg = str(err.value)
    assert msg.startswith("training diverged in round 2 (algo=FedDyn): 1 of ")
    assert "lower lr=0.1 (or algo.alpha=0.01)" in msg and "on_nonfinite=drop" in msg
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rounds_done"] == 1


def test_drop_leaves_out_nonfinite_clients(monkeypatch, tmp_path):
    """All clients of round 2 non-finite and dropped: round 2 changes nothing, so its test loss is
    round 1's; one client of round 3 dropped: counted, and the run finishes with finite metrics."""

    def poison(result, r):
        if r == 2:
            result.loss[:] = float("inf")
        else:
            result.thetas[0, :] = float("nan")

    inject(monkeypatch, lambda r: r in (2, 3), poison)
    runner.run(compose_config(*TINY, "algo=scaffold", "on_nonfinite=drop", "participation=1.0"), tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [int(r["dropped_clients"]) for r in rows] == [0, 5, 1, 0]
    assert rows[1]["test_loss"] == rows[0]["test_loss"] and rows[1]["test_acc"] == rows[0]["test_acc"]
    assert rows[1]["train_loss"] == "nan"
    assert all(math.isfinite(float(r["test_loss"])) for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_dropped_client_state_is_not_updated(monkeypatch, tmp_path):
    """FedDyn's per-client state row of a dropped client keeps its old value."""
    captured = {}
    original = runner.run_round

    def spy(exp, r):
        before = exp.store.tables["s"].clone() if "s" in exp.store else None
        out = original(exp, r)
        captured[r] = (before, exp.store.tables["s"].clone())
        return out

    inject(monkeypatch, lambda r: r == 2, lambda res, r: res.thetas[0].fill_(float("nan")))
    monkeypatch.setattr(runner, "run_round", spy)
    cfg = compose_config(*TINY, "algo=feddyn", "on_nonfinite=drop", "participation=1.0", "rounds=2")
    runner.run(cfg, tmp_path)
    before, after = captured[2]
    assert torch.equal(before[0], after[0])  # client 0 (dropped) unchanged
    assert not torch.equal(before[1:], after[1:])  # the others moved
    assert torch.isfinite(after).all()


def test_exploding_loss_stops(monkeypatch, tmp_path):
    inject(monkeypatch, lambda r: r == 3, lambda res, r: res.loss.mul_(1e4))
    with pytest.raises(DivergenceError) as err:
        runner.run(compose_config(*TINY, "algo=scaffold"), tmp_path)
    msg = str(err.value)
    assert "round 3 (algo=Scaffold)" in msg and "over divergence_factor=100 times the reference" in msg
    assert "algo.server_lr=1.0" in msg
    # divergence_factor=0 turns the check off
    runner.run(compose_config(*TINY, "algo=scaffold", "divergence_factor=0"), tmp_path / "off")


def test_nonfinite_test_loss_and_server_model_stop(monkeypatch, tmp_path):
    from fedrun.simulation import round as simulation_round

    real = simulation_round.evaluate
    calls = {"n": 0}

    def evaluate(*args):
        calls["n"] += 1
        return (float("nan"), 0.0) if calls["n"] == 1 else real(*args)

    monkeypatch.setattr(simulation_round, "evaluate", evaluate)
    with pytest.raises(DivergenceError, match=r"round 1 \(algo=FedAvg\): the server model's test loss is nan"):
        runner.run(compose_config(*TINY, "algo=fedavg"), tmp_path / "a")
    monkeypatch.setattr(simulation_round, "evaluate", real)

    from fedrun.algorithms.fedavg import FedAvg

    update = FedAvg.server_update
    monkeypatch.setattr(FedAvg, "server_update", lambda self, *a: (update(self, *a)[0] * float("inf"), a[3]))
    with pytest.raises(DivergenceError, match=r"round 1 \(algo=FedAvg\): the new server model is non-finite; lower lr=0.1\."):
        runner.run(compose_config(*TINY, "algo=fedavg"), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "diverged"


# ---------------------------------------------------------------------------------------------
# determinism and checkpoint helpers


def metrics_without_wall(path: Path) -> list[dict[str, str]]:
    rows = read_rows(path)
    for row in rows:
        row.pop("wall_s")
    return rows


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    args = [*TINY, "algo=feddyn", "partition=dirichlet", "partition.alpha=0.3"]
    runner.run(compose_config(*args), tmp_path / "a")
    runner.run(compose_config(*args), tmp_path / "b")
    runner.run(compose_config(*args, "seed=1"), tmp_path / "c")
    a, b, c = (metrics_without_wall(tmp_path / d / "metrics.csv") for d in "abc")
    assert a == b
    assert a != c  # the seed matters, so the equality above is not vacuous


def test_deterministic_flag_sets_torch_and_cublas(monkeypatch):
    from fedrun.simulation.determinism import configure_determinism
    from fedrun.config.specs import Numerics

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        assert configure_determinism(Numerics(False, "fp32")) is False
        assert torch.are_deterministic_algorithms_enabled() == before[0]
        assert configure_determinism(Numerics(True, "fp32")) is True
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def test_config_diff_ignores_only_progress_like_keys():
    a = {"lr": 0.1, "algo": {"alpha": 0.01}, "resume": "auto", "progress": None, "checkpoint_every": 10}
    b = {"lr": 0.1, "algo": {"alpha": 0.02}, "resume": "true", "progress": True, "checkpoint_every": 1, "seed": 1}
    assert resume.config_diff(a, b) == ["algo.alpha", "seed"]
    assert resume.config_diff(a, a) == []
    assert resume.config_diff({**a, "precision": "fp32"}, a) == ["precision"]  # a key on one side only differs


def test_checkpoint_is_written_atomically(tmp_path):
    """Periodic checkpoints replace each other via a temporary file; none is left when finished."""
    seen = []
    real_replace = checkpoint.os.replace

    def spy(src, dst):
        seen.append((Path(src).name, Path(dst).name, Path(dst).exists()))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint.os, "replace", spy)
        runner.run(compose_config(*TINY, "algo=feddyn", "rounds=5", "checkpoint_every=2"), tmp_path)
    ckpts = [s for s in seen if s[1] == "checkpoint.pt"]
    assert [s[0] for s in ckpts] == ["checkpoint.pt.tmp"] * 2  # rounds 2 and 4
    assert ckpts[1][2]  # the second replaced the first in one rename
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "checkpoint.pt.tmp").exists()


def test_resume_between_evaluations_keeps_pending_rounds(tmp_path):
    """eval_every=3, checkpoint_every=2: the checkpoint of round 4 carries round 4's train loss and
    megabytes (not yet in a row); resuming after a crash in round 6 gives the uninterrupted rows."""
    args = [*TINY, "algo=scaffold", "rounds=7", "eval_every=3", "checkpoint_every=2"]
    runner.run(compose_config(*args), tmp_path / "ref")
    stop_after(compose_config(*args), tmp_path / "run", 5)
    assert [r["round"] for r in read_rows(tmp_path / "run" / "metrics.csv")] == ["3"]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["round"] == 4
    runner.run(compose_config(*args), tmp_path / "run")
    assert metrics_without_wall(tmp_path / "run" / "metrics.csv") == metrics_without_wall(tmp_path / "ref" / "metrics.csv")
    assert [r["round"] for r in read_rows(tmp_path / "run" / "metrics.csv")] == ["3", "6", "7"]


def test_a_run_dir_written_before_the_modules_moved_compares_equal():
    """Run dirs written before the stage folders name ``fedrun.partition.*`` and
    ``fedrun.models_resnet.*`` as targets: the same functions, so the same config (a sweep re-run
    still skips and resumes them); another partition still differs."""
    new = {"partition": {"_target_": "fedrun.data.partition.dirichlet", "alpha": 0.3},
           "model": {"_target_": "fedrun.models.resnet.ResNet18GN"}, "seed": 0}
    old = {"partition": {"_target_": "fedrun.partition.dirichlet", "alpha": 0.3},
           "model": {"_target_": "fedrun.models_resnet.ResNet18GN"}, "seed": 0}
    assert resume.config_diff(new, old) == []
    other = {**old, "partition": {"_target_": "fedrun.partition.iid", "alpha": 0.3}}
    assert resume.config_diff(new, other) == ["partition._target_"]
