"""Experiment trackers behind one switch: ``logger=tensorboard``, ``logger=[tensorboard,mlflow]``.

Every evaluated round's metrics row goes to each tracker named, with the round as the step; the
config goes in as hyper-parameters and the summary's numbers at the end. ``metrics.csv`` is always
written (``csv`` names it, so a list can say it); the others are optional extras
(``pip install "fedrun[tensorboard]"``, ``"fedrun[mlflow]"``, ``wandb``):

- ``tensorboard``: event files in ``<run dir>/tensorboard/`` (``tensorboard --logdir outputs``);
- ``mlflow``: one MLflow run per fedrun run, in ``$MLFLOW_TRACKING_URI`` or else the local file store
  ``./mlruns`` (offline; MLflow 3 keeps file stores behind ``MLFLOW_ALLOW_FILE_STORE``, which fedrun
  sets for that store only), experiment ``$MLFLOW_EXPERIMENT_NAME`` or ``fedrun``;
- ``wandb``: Weights & Biases (online or ``WANDB_MODE=offline``), project ``$WANDB_PROJECT`` or ``fedrun``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from fedrun.errors import FedrunError
from fedrun.observers.base import Observer

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key != "round" and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: str(node)}


class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flat(config).items()), 0)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, int(row["round"]))
        self.writer.flush()

    def close(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("status", str(summary.get("status")), int(summary.get("rounds_done") or 0))
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file stores only on request
        self.client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fedrun")
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name, tags={"fedrun.run_dir": str(run_dir)}).info.run_id
        from mlflow.entities import Param

        params = [Param(k[:250], v[:6000]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, stamp = int(row["round"]), int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in _numbers(row).items()])

    def close(self, summary: dict[str, Any]) -> None:
        status = "FINISHED" if summary.get("status") == "finished" else "FAILED"
        self.client.set_tag(self.run_id, "fedrun.status", str(summary.get("status")))
        self.client.set_terminated(self.run_id, status=status)


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fedrun"), name=name, dir=str(run_dir), config=config, reinit=True)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=int(row["round"]))

    def close(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish(exit_code=0 if summary.get("status") == "finished" else 1)


KINDS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


class Loggers(Observer):
    """The trackers of one run; ``log`` each metrics row, ``close`` with the summary."""

    def __init__(self, names: Iterable[str], run_dir: Path, config: dict[str, Any], name: Optional[str] = None):
        self.active: list[Any] = []
        name = name or Path(run_dir).name
        for kind in names:
            if kind == "csv":  # metrics.csv: always written by the runner
                continue
            try:
                self.active.append(KINDS[kind](Path(run_dir), config, name))
            except ImportError:
                self.close({"status": "failed"})
                raise FedrunError(f"logger={kind} needs the {PACKAGES[kind]} package: pip install {PACKAGES[kind]} "
                                  f"(or leave {kind} out of logger).") from None

    def row(self, round_idx: int, row: dict[str, Any]) -> None:
        self.log(row)

    def log(self, row: dict[str, Any]) -> None:
        for logger in self.active:
            logger.log(row)

    def close(self, summary: dict[str, Any]) -> None:
        for logger in self.active:
            logger.close(summary)
        self.active = []


def open_loggers(names: Iterable[str], run_dir: Path, config: dict[str, Any]) -> Loggers:
    return Loggers(list(names), run_dir, config)
