"""The trackers read back with their own readers: MLflow's default SQLite store with artifacts and
run names, TensorBoard's HPARAMS view, W&B offline; a tracker that cannot start, a missing extra."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

import pytest

import fedrun
from fedrun.config import checks
from fedrun.observers import trackers as loggers
from fedrun.errors import FedrunError

TINY = ["algo=fedavg", "num_clients=6", "rounds=3", "local_epochs=1", "batch_size=20", "progress=false"]


@pytest.mark.slow  # a fresh SQLite store runs MLflow's schema migrations first: ~5 s idle, 14 s under load
def test_mlflow_without_a_uri_logs_to_a_local_sqlite_store_with_artifacts(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    df = fedrun.run([*TINY, "logger=mlflow", "seed=2"], run_dir=tmp_path / "run")
    assert (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns" / "0" / "meta.yaml").exists()  # SQLite, not a file store
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # read back as `mlflow ui --backend-store-uri sqlite:///mlflow.db` does
    (run,) = client.search_runs([client.get_experiment_by_name("fedrun").experiment_id])
    assert run.info.run_name == "synthetic_fedavg_s2" and run.info.status == "FINISHED"
    assert run.data.metrics["final/test_acc"] == pytest.approx(df.attrs["summary"]["final_test_acc"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test_acc")] == pytest.approx(df["test_acc"].tolist())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.csv", "summary.json"}
    local = Path(client.download_artifacts(run.info.run_id, "metrics.csv", str(tmp_path / "down")))
    assert local.read_bytes() == (tmp_path / "run" / "metrics.csv").read_bytes()


def test_tensorboard_hparams_hold_the_final_numbers(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = fedrun.run([*TINY, "logger=tensorboard"], run_dir=tmp_path / "run").attrs["summary"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert events.Scalars("final/test_acc")[-1].value == pytest.approx(summary["final_test_acc"], rel=1e-6)
    assert events.Scalars("final/best_test_acc")[-1].value == pytest.approx(summary["best_test_acc"], rel=1e-6)


def _wandb_records(path: str):
    """The records of a ``.wandb`` file: a 7-byte header, then LevelDB-log blocks of 32 KiB, each
    record a 7-byte header (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last) and its bytes."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, part, block = Path(path).read_bytes(), 7, b"", 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        part, pos = part + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            yield record
            part = b""


def test_wandb_offline_run_reads_back(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    df = fedrun.run([*TINY, "logger=wandb"], run_dir=tmp_path / "run")
    import wandb

    wandb.teardown()  # the wandb-core service writes the run's file asynchronously: wait for it to finish
    (path,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = list(_wandb_records(path))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "synthetic_fedavg_s0" and run.project == "fedrun"
    rows = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item} for h in rows]
    assert [h.step.num for h in rows] == [1, 2, 3]
    assert [h["test_acc"] for h in history] == pytest.approx(df["test_acc"].tolist())
    files = Path(path).parent / "files"
    assert (files / "metrics.csv").read_bytes() == (tmp_path / "run" / "metrics.csv").read_bytes()  # saved as a file of the run


def test_a_missing_extra_names_its_pip_command_before_any_run_dir(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checks, "_installed", lambda module: module != "wandb")
    with pytest.raises(FedrunError, match=r'logger=wandb needs wandb, which is not installed: pip install "fedrun\[wandb\]"'):
        fedrun.run([*TINY, "logger=wandb"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_cannot_start_leaves_a_failed_run_never_running(tmp_path: Path, monkeypatch):
    class Down:
        def __init__(self, *args):
            raise ConnectionError("tracking server at http://nowhere:5000 refused the connection")

    monkeypatch.setitem(loggers.KINDS, "tensorboard", Down)
    with pytest.raises(FedrunError, match=r"logger=tensorboard could not start \(ConnectionError: tracking server"):
        fedrun.run([*TINY, "logger=tensorboard"], run_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not start" in summary["error"]
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_hparams_search_without_the_optuna_extra_names_the_pip_command():
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        pytest.skip("the Optuna sweeper is installed here")
    from fedrun.cli.precheck import precheck

    with pytest.raises(FedrunError, match=r'hydra/sweeper=optuna needs a Hydra plugin that is not installed '
                                          r'\(\+hparams_search=feddyn_optuna asks for it\): pip install "fedrun\[optuna\]"'):
        precheck(["-m", "+hparams_search=feddyn_optuna"])


def test_an_unreachable_mlflow_server_is_one_sentence_in_seconds(tmp_path: Path, monkeypatch):
    """A tracking URI whose server does not answer (a closed port on this machine): one sentence that
    names the URI and what to do, within a few quick tries (MLflow's defaults retry for minutes), and
    the run dir's summary says failed, never running."""
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    began = time.monotonic()
    with pytest.raises(FedrunError, match=rf"logger=mlflow cannot reach its tracking store MLFLOW_TRACKING_URI=http://127.0.0.1:{port} .*unset MLFLOW_TRACKING_URI"):
        fedrun.run([*TINY, "logger=mlflow"], run_dir=tmp_path / "run")
    assert time.monotonic() - began < 60  # MLflow's own retries alone take about 4 minutes
    summary = json.loads((tmp_path / "run" / "summary.json").read_text()) if (tmp_path / "run" / "summary.json").exists() else {"status": "failed"}
    assert summary["status"] == "failed"
