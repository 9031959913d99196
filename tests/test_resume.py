"""Kill-and-resume with real processes: a run killed at a random round (SIGKILL) or stopped by
SIGTERM and then resumed writes the same metrics.csv as an uninterrupted run (wall_s aside).

FedDyn and SCAFFOLD keep per-client state (FedDyn's ``s`` table, SCAFFOLD's control variates and
server ``c``) and run here with partial participation, so a resume that lost or mis-restored any
state, RNG stream or counter changes later rows.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedrun.config.schema import CONF_DIR

ROUNDS = 10
ARGS = [
    f"rounds={ROUNDS}", "num_clients=6", "participation=0.4", "local_epochs=2", "batch_size=10",
    "data.mean_samples=40", "checkpoint_every=2", "device=cpu", "progress=false",
]


def needs(algo: str) -> None:
    if not (CONF_DIR / "algo" / f"{algo}.yaml").exists():
        pytest.skip(f"conf/algo/{algo}.yaml does not exist yet")


def command(algo: str, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedrun", f"algo={algo}", *ARGS, *extra, f"hydra.run.dir={run_dir}"]


def start(algo: str, run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command(algo, run_dir, *extra), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(algo: str, run_dir: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(algo, run_dir, *extra), cwd=cwd, capture_output=True, text=True, timeout=300)


def rows_in(path: Path) -> int:
    try:
        with path.open() as f:
            return max(0, sum(1 for _ in f) - 1)
    except FileNotFoundError:
        return 0


def wait_for_rows(proc: subprocess.Popen, path: Path, k: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while rows_in(path) < k:
        assert proc.poll() is None, f"the run ended before writing {k} rows: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "timed out waiting for metrics rows"
        time.sleep(0.005)


def metrics_without_wall(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs of the same config, once per algorithm, in this process (the killed and
    resumed runs are real processes; a run's numbers do not depend on which process computes them)."""
    from conftest import compose_config
    from fedrun.runner import run as run_in_process

    base = tmp_path_factory.mktemp("reference")
    out = {}
    for algo in ("feddyn", "scaffold"):
        if (CONF_DIR / "algo" / f"{algo}.yaml").exists():
            run_in_process(compose_config(f"algo={algo}", *ARGS), base / algo)
            out[algo] = base / algo / "metrics.csv"
    return out


def stop_at(algo: str, run_dir: Path, cwd: Path, k: int, sig: int) -> dict:
    """Start (or resume) the run, wait for ``k`` metrics rows, send ``sig``; returns the checkpoint."""
    proc = start(algo, run_dir, cwd)
    wait_for_rows(proc, run_dir / "metrics.csv", k)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    written = rows_in(run_dir / "metrics.csv")
    assert k <= written < ROUNDS  # it really stopped mid-run
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert len(ckpt["rows"]) == ckpt["round"] <= written  # never ahead of the metrics
    assert set(ckpt["store"]["tables"]) - {"_latest_delta"}, "a stateful algorithm must checkpoint its client-state tables"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert ckpt["round"] % 2 == 0 or ckpt["round"] < k  # checkpoint_every=2 (or an older SIGTERM one)
    else:  # SIGTERM: the round in progress finishes, its checkpoint is written, one sentence, exit 143
        assert proc.returncode == 128 + signal.SIGTERM
        lines = [line for line in err.splitlines() if line.startswith("fedrun: error:")]
        assert len(lines) == 1 and "stopped by SIGTERM after round" in lines[0] and "Traceback" not in err
        assert ckpt["round"] == written
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["rounds_done"] == written
    return ckpt


# FedDyn: SIGKILL at a random round. SCAFFOLD: SIGTERM at a random round, resume, SIGKILL at a later
# random round, resume (a resumed run is itself killed and resumed).
@pytest.mark.parametrize("algo,signals", [
    ("feddyn", [signal.SIGKILL]),
    pytest.param("scaffold", [signal.SIGTERM, signal.SIGKILL], marks=pytest.mark.slow),  # 13 s: make test keeps FedDyn's
])
def test_killed_at_random_rounds_then_resumed_is_identical(
    algo: str, signals: list[int], reference: dict[str, Path], tmp_path: Path
) -> None:
    needs(algo)
    run_dir = tmp_path / "run"
    draw = random.Random(f"kill-{algo}")
    k = 1
    for sig in signals:
        k = draw.randint(k + 2, k + 4)  # stop after this many rows (3..5, then 2..4 rows later)
        ckpt = stop_at(algo, run_dir, tmp_path, k, sig)
    resumed = run(algo, run_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after round {ckpt['round']}" in resumed.stderr + resumed.stdout
    assert metrics_without_wall(run_dir / "metrics.csv") == metrics_without_wall(reference[algo])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds_done"] == ROUNDS
    assert not (run_dir / "checkpoint.pt").exists()  # a finished run drops its checkpoint
