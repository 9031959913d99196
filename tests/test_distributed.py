"""One run over two processes (gloo, CPU) is the same run as in one process.

The two ranks are forked from the test process (torch already imported, so they start in well under
a second) and join a gloo group on 127.0.0.1 through the same environment torchrun sets (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT). One pair of ranks runs every job of the module in turn; the
tests then compare what they left with single-process runs of the same configs. The kill-and-resume
test starts ``python -m fedrun`` twice per rank, since the process boundary is its point.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedrun import distributed
from fedrun.rundir import ranked as ranked_checkpoint
from fedrun.algorithms.base import LocalHook, LocalObjective
from fedrun.algorithms.sam import sam_gradient
from fedrun.engines.base import LocalTraining
from fedrun.engines.sequential import SequentialEngine
from fedrun.errors import FedrunError
from conftest import build
from fedrun.simulation.round import run_round
from fedrun.runner import run
from tests.conftest import compose_config

ALGOS = ("feddyn", "scaffold", "fedadam")
# the other algorithms, the other engine and per-rank mmap state (slow tests)
EXTRA = {
    "fedavg_sequential": ("algo=fedavg", "engine=sequential"),
    "fedprox": ("algo=fedprox",),
    "feddyn_mmap": ("algo=feddyn", "state_placement=mmap"),
    "fedsmoo": ("algo=fedsmoo",),  # a local-step hook with per-client state (mu)
    "feddc": ("algo=feddc",),
    "fednova": ("algo=fednova",),
}
# partial participation (Bernoulli p = 0.3 of 20 clients), a short run
SMALL = ("participation=0.3", "rounds=3", "local_epochs=1", "progress=false", "checkpoint_every=0")
STATE_ROUNDS = 3


@dataclass
class CountingSAM(LocalHook):
    """SAM steps that also count each client's real steps in a per-client result (rows by ``hook_rows``)."""

    count: torch.Tensor  # [A, 1]

    def gradient(self, grad_fn, w, objective, active):  # noqa: ANN001
        self.count[objective.hook_rows] += torch.ones(len(w), 1) if active is None else active.float()
        return sam_gradient(grad_fn, w, 0.05)

    def result(self) -> dict[str, torch.Tensor]:
        return {"count": self.count.clone()}


HOOK_CLIENTS = torch.tensor([0, 1, 2, 3, 5, 8, 13])  # unequal shares: 3 clients of rank 0, 4 of rank 1


def train_with_hook(exp) -> dict[str, torch.Tensor]:  # noqa: ANN001
    objective = LocalObjective(hook=CountingSAM(torch.zeros(len(HOOK_CLIENTS), 1)))
    hp = LocalTraining(0.1, 2, 10, 1e-5, 10.0)
    result = exp.engine.train(exp.model, exp.theta, exp.data, exp.partition, HOOK_CLIENTS, objective, hp, 0, 1)
    return {"thetas": result.thetas, "loss": result.loss, "steps": result.steps, **objective.hook.result()}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module", autouse=True)
def no_plots():
    """The convergence plot takes half of a 3-round run here (tested elsewhere): off in this module,
    also in the forked ranks."""
    import fedrun.runner

    saved = fedrun.runner.convergence_plot
    fedrun.runner.convergence_plot = lambda *args, **kwargs: None
    yield
    fedrun.runner.convergence_plot = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _worker(rank: int, port: int, base: str, errors, extra: bool) -> None:  # noqa: ANN001 - a forked process
    try:
        os.environ.update(rank_env(rank, 2, port))
        torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1: two ranks on two cores
        ranks = distributed.setup()
        if extra:
            for name, overrides in EXTRA.items():
                run(compose_config(*overrides, *SMALL), Path(base) / name)
            distributed.teardown()
            return
        for algo in ALGOS:  # whole runs through the runner: rank 0 writes the run dir
            run(compose_config(f"algo={algo}", *SMALL), Path(base) / algo)
        # three rounds of FedDyn and SCAFFOLD, then this rank's state tables
        for algo in ("feddyn", "scaffold"):
            exp = build(compose_config(f"algo={algo}", *SMALL))
            for r in range(1, STATE_ROUNDS + 1):
                run_round(exp, r)
            shard = {"ids": exp.store.owned_ids(), "tables": exp.store.shard()["tables"], "rows": exp.store.inner.num_clients}
            torch.save(shard, Path(base) / f"state_{algo}_rank{ranks.rank}.pt")
        # a local-step hook with per-client results, through both engines
        for engine in ("vectorized", "sequential"):
            exp = build(compose_config(f"engine={engine}", *SMALL))
            torch.save(train_with_hook(exp), Path(base) / f"hook_{engine}_rank{ranks.rank}.pt")
        # local training fails on rank 1 only: both ranks must stop with its sentence
        if ranks.rank == 1:
            def fail(*args, **kwargs):
                raise FedrunError("client 3 ran out of bananas: lower banana_rate.")
            SequentialEngine.train = fail  # type: ignore[method-assign]
        try:
            run(compose_config("engine=sequential", *SMALL), Path(base) / "fails")
        except FedrunError as err:
            (Path(base) / f"error_rank{ranks.rank}.txt").write_text(f"{type(err).__name__}: {err}")
        distributed.teardown()
    except BaseException as err:  # noqa: BLE001 - reported to the test
        errors.put(f"rank {rank}: {type(err).__name__}: {err}")
        raise


def fork_ranks(base: Path, extra: bool) -> Path:
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(base), errors, extra)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    problems = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert all(p.exitcode == 0 for p in procs), problems
    return base


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return fork_ranks(tmp_path_factory.mktemp("ranks"), extra=False)


@pytest.fixture(scope="module")
def two_ranks_extra(tmp_path_factory):
    return fork_ranks(tmp_path_factory.mktemp("ranks_extra"), extra=True)


def metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.mark.parametrize("algo", ALGOS)
def test_two_ranks_write_the_metrics_of_one_process(two_ranks, tmp_path, algo):
    """Rows are gathered, not summed, and every rank runs the server update on the same full
    tensors, so the metrics must be bit-identical (every column but wall_s) at partial participation."""
    run(compose_config(f"algo={algo}", *SMALL), tmp_path)
    ranked = metrics(two_ranks / algo / "metrics.csv")
    single = metrics(tmp_path / "metrics.csv")
    assert len(single) == 3
    assert ranked == single
    assert {int(r["active_clients"]) for r in single} != {20}  # partial participation
    # rank 0 alone wrote the run dir, and a finished run leaves no shard files
    assert (two_ranks / algo / "summary.json").exists()
    assert not (two_ranks / algo / ranked_checkpoint.SHARDS).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTRA)
def test_other_algorithms_engine_and_mmap_state_on_two_ranks(two_ranks_extra, tmp_path, name):
    """FedAvg (sequential engine), FedProx, FedSMOO (a hook with per-client state), FedDC, FedNova and
    FedDyn with each rank's state in mmap files: the same metrics."""
    run(compose_config(*EXTRA[name], *SMALL), tmp_path)
    assert metrics(two_ranks_extra / name / "metrics.csv") == metrics(tmp_path / "metrics.csv")


@pytest.mark.parametrize("algo", ["feddyn", "scaffold"])
def test_each_rank_holds_only_its_clients_rows(two_ranks, algo):
    """After 3 rounds, rank r's tables have the rows of clients r, r+2, ... only (10 of 20 each), and
    each row equals that client's row of the single-process run."""
    exp = build(compose_config(f"algo={algo}", *SMALL))
    for r in range(1, STATE_ROUNDS + 1):
        run_round(exp, r)
    touched = 0
    for rank in range(2):
        shard = torch.load(two_ranks / f"state_{algo}_rank{rank}.pt")
        assert shard["rows"] == 10
        assert torch.equal(shard["ids"], torch.arange(rank, 20, 2))
        for name, table in shard["tables"].items():
            assert table.shape == (10, exp.model.num_params)
            full = exp.store.get(name, shard["ids"])
            assert torch.equal(table, full.cpu())
            touched += int(table.abs().sum(1).gt(0).sum())
    assert touched > 0  # some clients were active, so some rows are not zeros


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_local_hook_sees_the_rows_of_all_active_clients(two_ranks, engine):
    """Each rank runs the hook for its own clients, at their positions among all active clients, and
    the per-client results are gathered: models, losses, steps and the hook's step counts all equal
    one process's (client k's count = its number of local steps, 2 epochs of ceil(n_k/10) batches)."""
    single = train_with_hook(build(compose_config(f"engine={engine}", *SMALL)))
    assert torch.equal(single["count"].flatten().long(), single["steps"])
    for rank in range(2):
        ranked = torch.load(two_ranks / f"hook_{engine}_rank{rank}.pt")
        assert ranked.keys() == single.keys()
        for key in single:
            assert torch.equal(ranked[key], single[key]), key


def test_an_error_on_one_rank_stops_both_with_its_sentence(two_ranks):
    """Rank 1's training raised; the error flag all-reduced after training stops rank 0 too, with
    rank 1's sentence, and rank 0 still writes the run's summary (status failed)."""
    assert (two_ranks / "error_rank1.txt").read_text() == "FedrunError: client 3 ran out of bananas: lower banana_rate."
    assert (two_ranks / "error_rank0.txt").read_text() == (
        "RankFailed: rank 1 of 2 stopped in round 1: client 3 ran out of bananas: lower banana_rate."
    )
    assert '"status": "failed"' in (two_ranks / "fails" / "summary.json").read_text()


def test_a_checkpoint_of_other_ranks_is_refused(tmp_path):
    ckpt = {"store": {"placement": "sharded", "ranks": 2}}
    with pytest.raises(FedrunError, match="written by 2 rank.*torchrun --nproc-per-node 2"):
        ranked_checkpoint.check_ranks(ckpt, None, tmp_path)
    single = {"store": {"placement": "device", "tables": {}}}
    ranks = distributed.Ranks(0, 2, 0, "gloo")
    with pytest.raises(FedrunError, match="written by 1 rank.*single process"):
        ranked_checkpoint.check_ranks(single, ranks, tmp_path)
    ranked_checkpoint.check_ranks(ckpt, ranks, tmp_path)  # same N: accepted


def test_sharding_rule():
    ranks = distributed.Ranks(1, 3, 1, "gloo")
    ids = torch.tensor([0, 1, 2, 4, 7, 9])
    assert ranks.owned(ids).tolist() == [1, 3, 4]  # clients 1, 4, 7 (id mod 3 == 1)
    assert ranks.local_rows(ids[ranks.owned(ids)]).tolist() == [0, 1, 2]
    assert [distributed.Ranks(r, 3, r, "gloo").shard_size(10) for r in range(3)] == [4, 3, 3]


def _start(rank: int, port: int, run_dir: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, **rank_env(rank, 2, port), "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "fedrun", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_rank_stops_the_other_and_the_run_resumes(tmp_path):
    """SIGKILL rank 1 mid-run: rank 0 stops within seconds with one sentence (exit 2); the same two
    commands again resume from the checkpoint and finish with the single-process metrics."""
    args = ["participation=0.3", "rounds=12", "local_epochs=1", "checkpoint_every=2", "progress=false"]
    run_dir = tmp_path / "run"
    port = free_port()
    procs = [_start(r, port, run_dir, args) for r in range(2)]
    shards = run_dir / ranked_checkpoint.SHARDS
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.2)
    assert procs[1].poll() is None, procs[1].communicate()[1]
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    out, err = procs[0].communicate(timeout=120)
    stopped = time.time() - killed
    procs[1].wait()
    assert procs[0].returncode == 2, err
    assert "lost contact with the other ranks" in err and "resume" in err
    assert "Traceback" not in err
    print(f"rank 0 stopped {stopped:.1f} s after rank 1 was killed")
    assert stopped < 30  # seconds, on a loaded 2-core machine; gloo reports the closed connection at once
    assert (run_dir / "checkpoint.pt").exists()
    port = free_port()
    procs = [_start(r, port, run_dir, args) for r in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1] + results[1][1]
    assert "resuming" in results[0][0] + results[0][1]
    single = tmp_path / "single"
    run(compose_config(*args), single)
    assert metrics(run_dir / "metrics.csv") == metrics(single / "metrics.csv")
    assert not shards.exists() and not (run_dir / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_after_a_common_checkpoint(tmp_path):
    """SIGTERM to rank 1 alone: the stop flag is all-reduced after the round, so both ranks write the
    checkpoint of the same round (a shard each, then checkpoint.pt) and exit with 128 + 15."""
    args = ["participation=0.3", "rounds=200", "local_epochs=1", "checkpoint_every=0", "progress=false"]
    run_dir = tmp_path / "run"
    port = free_port()
    procs = [_start(r, port, run_dir, args) for r in range(2)]
    deadline = time.time() + 300
    while not (run_dir / "metrics.csv").exists() and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [128 + 15] * 2, results[0][1] + results[1][1]
    assert "stopped by SIGTERM after round" in results[0][1]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["store"] == {"placement": "sharded", "ranks": 2}
    shards = sorted(p.name for p in (run_dir / ranked_checkpoint.SHARDS).iterdir())
    assert shards == [f"rank{r}-of-2.round{ckpt['round']:08d}.pt" for r in range(2)]
    assert 1 <= ckpt["round"] < 200
