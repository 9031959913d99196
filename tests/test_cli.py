"""End to end through the ``fedrun`` command (a real subprocess: the console entry point, its exit code
and its outputs; everything else about the command line is tested in-process, in test_errors.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["num_clients=8", "data.mean_samples=30", "local_epochs=1", "participation=0.5", "progress=false"]


def fedrun(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrun", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_run_writes_metrics_summary_plot_and_config(tmp_path):
    run_dir = tmp_path / "run"
    proc = fedrun(*TINY, "rounds=4", "eval_every=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for col in ["round", "active_clients", "train_loss", "test_loss", "test_acc", "uplink_mb", "downlink_mb", "wall_s"]:
        assert col in metrics.columns
    assert metrics["round"].tolist() == [2, 4]
    assert (metrics["wall_s"].diff().dropna() > 0).all(), "wall_s is cumulative"
    assert metrics["test_acc"].between(0, 1).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds_done"] == 4
    assert summary["num_params"] == 30 * 5 + 5  # logreg d=30 -> C=5
    assert summary["best_test_acc"] == metrics["test_acc"].max()
    assert summary["config"]["num_clients"] == 8
    assert (run_dir / "convergence.png").stat().st_size > 10_000
    assert (run_dir / ".hydra" / "config.yaml").exists()
    # communication: two MB columns are (active clients) x params x 4 bytes per round, summed over the 2 rounds
    assert (metrics["uplink_mb"] > 0).all() and (metrics["uplink_mb"] == metrics["downlink_mb"]).all()
    assert "round 4/4" in proc.stderr + proc.stdout  # plain progress lines when not on a terminal


@pytest.mark.parametrize("how", ["searchpath", "config-dir"])
def test_a_users_config_folder_adds_options(tmp_path: Path, how: str):
    """conf/ is found inside the package, and Hydra's ways of adding a user's own configs still work:
    ``hydra.searchpath=[file://DIR]`` and ``--config-dir DIR`` (an algo option of the user's, built on fedavg)."""
    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "my_fedavg.yaml").write_text("defaults:\n  - fedavg\n  - _self_\n")
    where = [f"hydra.searchpath=[file://{tmp_path}]"] if how == "searchpath" else ["--config-dir", str(tmp_path)]
    proc = fedrun(*where, "algo=my_fedavg", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "_target_: fedrun.algorithms.fedavg.FedAvg" in proc.stdout
