"""fedrun from Python (fedrun.run / fedrun.compose), the trackers read back with their own readers,
summary.json's provenance, --help/--version without torch, threads= and quiet=."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import fedrun
from fedrun.errors import FedrunError

REPO = Path(__file__).resolve().parent.parent
TINY = ["num_clients=6", "rounds=3", "local_epochs=1", "batch_size=20", "progress=false"]


def test_run_returns_the_metrics_and_a_finished_run_is_not_run_again(tmp_path: Path):
    df = fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "a")
    on_disk = pd.read_csv(tmp_path / "a" / "metrics.csv")
    pd.testing.assert_frame_equal(df, on_disk)
    assert df["round"].tolist() == [1, 2, 3]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert df.attrs["summary"] == summary and summary["status"] == "finished"
    stamp = (tmp_path / "a" / "metrics.csv").stat().st_mtime_ns
    again = fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "a")  # finished: read back, not rerun
    pd.testing.assert_frame_equal(again, df)
    assert (tmp_path / "a" / "metrics.csv").stat().st_mtime_ns == stamp


def test_compose_gives_the_command_lines_config_and_runs_as_the_overrides_do(tmp_path: Path):
    cfg = fedrun.compose(["algo=fedavg", *TINY])
    assert cfg.rounds == 3 and cfg.algo._target_.endswith("FedAvg") and "hydra" not in cfg
    by_cfg = fedrun.run(cfg, run_dir=tmp_path / "cfg")
    by_list = fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "list")
    pd.testing.assert_frame_equal(by_cfg.drop(columns="wall_s"), by_list.drop(columns="wall_s"))  # same config, same numbers


def test_api_errors_are_the_commands_sentences():
    with pytest.raises(FedrunError, match="did you mean algo.alpha"):
        fedrun.compose(["algo.alpah=1"])
    with pytest.raises(FedrunError, match="participation=2.0 is out of range"):
        fedrun.compose(["participation=2"])
    with pytest.raises(FedrunError, match="logger=tb is not a logger"):
        fedrun.compose(["logger=tb"])
    with pytest.raises(FedrunError, match="fedrun.run takes a list of overrides"):  # issue 23: FedrunError, always
        fedrun.run("algo=fedavg")


def test_summary_records_version_commit_torch_and_device(tmp_path: Path):
    summary = fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "a").attrs["summary"]
    assert summary["fedrun_version"] == fedrun.__version__
    assert summary["torch_version"] == torch.__version__
    assert summary["device"] == "cpu" and summary["device_name"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the commit, marked dirty when files differ from it
        assert summary["git_commit"].split("+")[0] == head.stdout.strip()


def test_tensorboard_and_mlflow_read_back_the_metrics(tmp_path: Path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "api-test")
    df = fedrun.run(["algo=fedavg", *TINY, "logger=[tensorboard,mlflow,csv]"], run_dir=tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("test_acc")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx(df["test_acc"].tolist(), rel=1e-6)  # stored as float32
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("api-test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["algo._target_"].endswith("FedAvg")
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(df["train_loss"].tolist())


def test_help_and_version_answer_without_importing_torch():
    code = ("import sys; from fedrun.cli.help import main; main(['--help']); main(['--version']); "
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "algo=feddyn" in out and "algo=feddyn_alpha0.1" in out and "participation" in out
    assert "fraction of clients active per round" in out  # the key's one-line description from conf/config.yaml
    assert "schema" not in out  # no internal schema groups
    assert out.strip().splitlines()[-1].startswith(f"fedrun {fedrun.__version__}")


def test_threads_restored_after_the_run(tmp_path: Path):
    before = torch.get_num_threads()
    summary = fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "a").attrs["summary"]
    assert summary["threads"] == 1 and torch.get_num_threads() == before  # a tiny step: one thread (tests/test_threads.py)


def test_quiet_prints_no_round_lines(tmp_path: Path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="fedrun"):
        fedrun.run(["algo=fedavg", *TINY, "quiet=true"], run_dir=tmp_path / "q")
    assert not [r for r in caplog.records if r.getMessage().startswith("round ")]
    with caplog.at_level(logging.INFO, logger="fedrun"):
        fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "loud")
    assert len([r for r in caplog.records if r.getMessage().startswith("round ")]) == 3


def test_a_finished_run_kept_with_its_checkpoint_continues_with_more_rounds(tmp_path: Path):
    """rounds=4 then rounds=7 in the same run dir gives the metrics of one 7-round run (every draw is
    a function of seed and round); without keep_checkpoint the sentence says how to make it possible."""
    base = [o for o in TINY if not o.startswith("rounds=")]
    keep = ["algo=feddyn", *base, "keep_checkpoint=true"]
    fedrun.run([*keep, "rounds=4"], run_dir=tmp_path / "x")
    assert (tmp_path / "x" / "checkpoint.pt").exists()
    again = fedrun.run([*keep, "rounds=4"], run_dir=tmp_path / "x")  # same rounds: finished, nothing to do
    assert len(again) == 4
    extended = fedrun.run([*keep, "rounds=7"], run_dir=tmp_path / "x")
    whole = fedrun.run([*keep, "rounds=7"], run_dir=tmp_path / "whole")
    assert extended["round"].tolist() == list(range(1, 8)) and extended.attrs["summary"]["rounds_done"] == 7
    pd.testing.assert_frame_equal(extended.drop(columns="wall_s"), whole.drop(columns="wall_s"))
    fedrun.run(["algo=fedavg", *TINY], run_dir=tmp_path / "plain")
    with pytest.raises(FedrunError, match="keep_checkpoint=true"):
        fedrun.run(["algo=fedavg", *base, "rounds=5"], run_dir=tmp_path / "plain")
