"""Hydra multirun through ``fedrun -m`` on each launcher, then ``fedrun-report``.

A 2x2 sweep (seed x lr) must give 4 run directories, each with metrics.csv, summary.json and
.hydra/, and a 4-row report. The basic launcher runs in this process (``fedrun.cli.main.main()``); the
others start processes (the real command), so they are ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest
import yaml

from fedrun.report import cli as fedrun_report
from fedrun.cli.launch import acquire_slot

REPO = Path(__file__).resolve().parent.parent
TINY = ["algo=fedavg", "num_clients=4", "data.mean_samples=20", "local_epochs=1", "participation=0.5", "rounds=2", "progress=false"]
SWEEP = ["seed=0,1", "lr=0.1,0.05"]


def fedrun(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrun", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def fedrun_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    """``fedrun ARGS`` in this process; returns what it printed."""
    from fedrun.cli import main as cli

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["fedrun", *args])
    cli.main()
    out = capsys.readouterr()
    return out.out + out.err


def check_sweep(sweep_dir: Path, proc: Optional[subprocess.CompletedProcess] = None) -> list[Path]:
    if proc is not None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 4, [p.name for p in runs]
    seen = set()
    for run in runs:
        assert (run / ".hydra" / "config.yaml").exists()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds_done"] == 2
        assert len(pd.read_csv(run / "metrics.csv")) == 2
        seen.add((summary["config"]["seed"], summary["config"]["lr"]))
    assert seen == {(0, 0.1), (0, 0.05), (1, 0.1), (1, 0.05)}  # every point of the grid, once
    assert fedrun_report.main([str(sweep_dir), "--targets", "0.3"]) == 0
    table = pd.read_csv(sweep_dir / "runs.csv")
    assert len(table) == 4 and (table["status"] == "finished").all()
    assert list(table.columns[:2]) == ["lr", "seed"]  # the keys that vary, nothing else
    assert (sweep_dir / "convergence.png").stat().st_size > 0
    return runs


@pytest.mark.usefixtures("restore_logging")
def test_basic_launcher_sweep_report_and_skip_finished(tmp_path, monkeypatch, capsys):
    sweep_dir = tmp_path / "sweep"
    out = fedrun_in_process(monkeypatch, capsys, "-m", *TINY, *SWEEP, "quiet=true", f"hydra.sweep.dir={sweep_dir}")
    runs = check_sweep(sweep_dir)
    # quiet=true: no per-round line, but each run's summary line, a line per job (ETA while jobs are left) and the table
    assert "round 1/2" not in out and out.count("fedrun: finished: test_acc") == 4
    for k in (1, 2, 3):
        assert re.search(rf"job {k}/4 finished, \d+\.\d\d%, ETA ", out), out
    assert re.search(r"job 4/4 finished, \d+\.\d\d%\n", out)
    header = next(line for line in out.splitlines() if line.split()[:3] == ["job", "seed", "lr"])  # only the keys that vary
    assert header.split() == ["job", "seed", "lr", "status", "final", "best", "rounds", "time"]
    # re-running the same sweep with skip_finished=true leaves finished runs alone, in the same dirs
    stamps = {r: (r / "summary.json").stat().st_mtime_ns for r in runs}
    again = fedrun_in_process(monkeypatch, capsys, "-m", *TINY, *SWEEP, "skip_finished=true", f"hydra.sweep.dir={sweep_dir}")
    assert sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == runs
    assert {r: (r / "summary.json").stat().st_mtime_ns for r in runs} == stamps
    assert again.count("already holds a finished run") == 4


@pytest.mark.slow
@pytest.mark.skipif(not has("hydra_plugins.hydra_joblib_launcher"), reason="hydra-joblib-launcher not installed (pip install -e '.[dev]')")
def test_joblib_launcher_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = fedrun("-m", *TINY, *SWEEP, "hydra/launcher=joblib_gpu", "hydra.launcher.n_jobs=2", "hydra/callbacks=gpu_slots",
                  f"hydra.callbacks.gpu_slots.lock_dir={tmp_path / 'slots'}", f"hydra.sweep.dir={sweep_dir}")
    check_sweep(sweep_dir, proc)


@pytest.mark.slow
@pytest.mark.skipif(not has("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher not installed (pip install -e '.[dev]')")
def test_submitit_local_launcher_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = fedrun("-m", *TINY, *SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep_dir}")
    check_sweep(sweep_dir, proc)


@pytest.mark.slow
@pytest.mark.skipif(not has("ray") or not has("hydra_plugins.hydra_ray_launcher"), reason="ray / hydra-ray-launcher not installed (pip install -e '.[ray]')")
def test_ray_local_launcher_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = fedrun("-m", *TINY, *SWEEP, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", f"hydra.sweep.dir={sweep_dir}")
    check_sweep(sweep_dir, proc)


def test_gpu_slots_never_hand_out_more_than_the_slots(tmp_path):
    first, h1 = acquire_slot(tmp_path, 2)
    second, h2 = acquire_slot(tmp_path, 2)
    assert (first, second) == (0, 1)
    with pytest.raises(TimeoutError):
        acquire_slot(tmp_path, 2, poll_s=0.01, timeout_s=0.05)  # both taken: a third run waits
    h1.close()  # the run holding slot 0 ended (or its process died): its lock is gone
    again, h3 = acquire_slot(tmp_path, 2, timeout_s=1)
    assert again == 0
    assert (tmp_path / "slot-0.lock").read_text().strip() == str(os.getpid())
    h2.close()
    h3.close()


@pytest.mark.usefixtures("restore_logging")
def test_a_diverged_or_failed_run_does_not_stop_the_sweep_and_is_marked(tmp_path, monkeypatch, capsys):
    """lr=1e6 diverges; partition=shards cannot cut 4 x 21 = 84 samples into 8 equal shards, which
    only building the run finds out: both are marked, the other run finishes, the sweep goes on."""
    import signal

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # cli.main sets it for its process
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # and a SIGTERM handler
    sweep_dir = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("rounds=", "data.mean_samples="))]
    with pytest.raises(SystemExit) as exited:  # the sweep ends non-zero (3: a job diverged), a line per job that did not finish
        fedrun_in_process(
            monkeypatch, capsys, "-m", *tiny, "rounds=3", "data.mean_samples=21", "lr=1e6,0.1", "partition=natural,shards",
            f"hydra.sweep.dir={sweep_dir}",
        )
    printed = capsys.readouterr()
    out = printed.out + printed.err
    assert exited.value.code == 3
    assert "diverged" in out and "cannot cut 84 samples" in out and "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith("fedrun: error: sweep job ")]
    assert len(lines) == 3 and sum("training diverged" in line for line in lines) == 1, out
    assert sorted(re.findall(r"job \d/4 (\w+),", out)) == ["diverged", "failed", "failed", "finished"]  # the per-job lines say how each ended
    assert fedrun_report.main([str(sweep_dir)]) == 0
    table = pd.read_csv(sweep_dir / "runs.csv")
    status = {(row["lr"], row["partition"]): row["status"] for _, row in table.iterrows()}
    assert status == {(1e6, "natural"): "diverged", (0.1, "natural"): "finished", (1e6, "shards"): "failed", (0.1, "shards"): "failed"}
    failed = [json.loads(p.read_text()) for p in sweep_dir.glob("*shards*/summary.json")]
    assert len(failed) == 2 and all("cannot cut 84 samples" in f["error"] for f in failed)


@pytest.mark.slow
@pytest.mark.skipif(not has("hydra_plugins.hydra_optuna_sweeper"), reason="hydra-optuna-sweeper not installed (pip install -e '.[optuna]')")
def test_optuna_search_tunes_feddyn_alpha_and_lr(tmp_path):
    sweep_dir = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("algo=")]  # the search config picks FedDyn
    proc = fedrun("-m", "+hparams_search=feddyn_optuna", "hydra.sweeper.n_trials=3", *tiny, f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"algo.alpha", "lr"}
    finals = []
    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["config"]["algo"]["_target_"].endswith("FedDyn")
        assert 1e-3 <= summary["config"]["algo"]["alpha"] <= 1.0 and 0.01 <= summary["config"]["lr"] <= 0.5
        finals.append(summary["final_test_acc"])
    assert len(finals) == 3 and result["best_value"] == pytest.approx(max(finals))  # the objective is the final accuracy
