"""Experiment trackers behind one switch: ``logger=tensorboard``, ``logger=[tensorboard,mlflow]``.

Every evaluated round's metrics row goes to each tracker named, with the round as the step; the
config goes in as hyper-parameters, and at the end the summary's numbers and (MLflow, W&B) the
run's ``metrics.csv``, ``summary.json`` and convergence plot as artifacts. Each tracker's run is
named like ``synthetic_feddyn_s0`` (data, algo, seed: :func:`run_name`). ``metrics.csv`` is always
written (``csv`` names it, so a list can say it); the others are optional extras, checked before a
run dir is made (:func:`check_installed`: a missing one names its pip command):

- ``tensorboard`` (``pip install "fedrun[tensorboard]"``): event files in ``<run dir>/tensorboard/``
  (``tensorboard --logdir outputs``), with the final and best accuracy in the HPARAMS view;
- ``mlflow`` (``pip install "fedrun[mlflow]"``): one MLflow run per fedrun run, in
  ``$MLFLOW_TRACKING_URI`` or else MLflow 3's recommended local store, the SQLite file
  ``./mlflow.db`` (artifacts in ``./mlruns/``; ``mlflow ui --backend-store-uri sqlite:///mlflow.db``),
  experiment ``$MLFLOW_EXPERIMENT_NAME`` or ``fedrun``;
- ``wandb`` (``pip install "fedrun[wandb]"``): Weights & Biases, online or ``WANDB_MODE=offline``
  (files in ``<run dir>/wandb/``; ``wandb sync`` uploads them later), project ``$WANDB_PROJECT`` or ``fedrun``.

A tracker that fails to start (a server that cannot be reached) fails the run before its first
round; the runner then records ``status: failed`` with the sentence (never ``running``).
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
# How long a tracking server that does not answer is tried (MLflow's own defaults: 7 retries, backoff 2,
# 120 s a request); a variable the user sets wins.
SERVER_TRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
ARTIFACTS = ("metrics.csv", "summary.json", "convergence.png", "client_metrics.csv")


def run_name(config: dict[str, Any], options: dict[str, str], data: str, algo: str) -> str:
    """``synthetic_feddyn_s0``: the data and algo options (``options``: the spec's, which name the
    config's own options when Hydra chose them), else the dataset's and algorithm's names, and the seed."""
    from fedrun.config.schema import option_names

    data = options.get("data") if options.get("data") in option_names("data") else data
    algo = options.get("algo") if options.get("algo") in option_names("algo") else algo.lower()
    return f"{data}_{algo}_s{config.get('seed', 0)}"


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key != "round" and math.isfinite(float(value)):
            out[key] = float(value)
    return out


FINAL_KEYS = ("final_test_acc", "best_test_acc", "final_test_loss", "final_train_loss", "final_val_acc", "rounds_done", "seconds")


def _flat_values(node: Any, prefix: str = "") -> dict[str, Any]:
    """The config's leaves as TensorBoard hparams take them: numbers and booleans as they are, the rest as text."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat_values(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node if isinstance(node, (bool, int, float)) else str(node)}


def _flat(node: Any) -> dict[str, str]:
    """The config's leaves as text (dotted keys)."""
    return {k: str(v) for k, v in _flat_values(node).items()}


class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flat(config).items()), 0)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, int(row["round"]))
        self.writer.flush()

    def close(self, summary: dict[str, Any], run_dir: Path) -> None:
        self.writer.add_text("status", str(summary.get("status")), int(summary.get("rounds_done") or 0))
        hparams = {k: v for k, v in _flat_values(self.config).items()}
        finals = {"final/" + k.removeprefix("final_"): float(summary[k]) for k in FINAL_KEYS if isinstance(summary.get(k), (int, float))}
        if finals:  # the HPARAMS tab: one row per run, its settings beside its final numbers
            self.writer.add_hparams(hparams, finals, run_name=".")  # "." : into this run's own event files
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"  # MLflow 3's local store
        if uri.startswith("file:"):  # a file store the user named: MLflow 3 opens those only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _quiet_alembic()
        if uri.startswith(("http:", "https:")):  # a server: a few quick tries, not MLflow's 7 retries over ~4 minutes
            for key, value in SERVER_TRIES.items():
                os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fedrun")
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as err:  # noqa: BLE001 - a server that does not answer, a store that cannot be opened
            reason = str(err).strip().split("\n", 1)[0][:160]
            raise FedrunError(
                f"logger=mlflow cannot reach its tracking store MLFLOW_TRACKING_URI={uri} ({type(err).__name__}: {reason}): "
                "start that server or fix the variable, unset MLFLOW_TRACKING_URI to log to ./mlflow.db, or leave mlflow out of logger."
            ) from None
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

    def close(self, summary: dict[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Metric

        stamp, step = int(1000 * time.time()), int(summary.get("rounds_done") or 0)
        finals = [Metric("final/" + k.removeprefix("final_"), float(summary[k]), stamp, step) for k in FINAL_KEYS if isinstance(summary.get(k), (int, float))]
        if finals:
            self.client.log_batch(self.run_id, metrics=finals)
        for name in ARTIFACTS:
            if (Path(run_dir) / name).exists():
                self.client.log_artifact(self.run_id, str(Path(run_dir) / name))
        status = "FINISHED" if summary.get("status") == "finished" else "FAILED"
        self.client.set_tag(self.run_id, "fedrun.status", str(summary.get("status")))
        self.client.set_terminated(self.run_id, status=status)


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fedrun"), name=name, dir=str(run_dir), config=config,
                              reinit="create_new")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=int(row["round"]))

    def close(self, summary: dict[str, Any], run_dir: Path) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        for name in ARTIFACTS:
            if (Path(run_dir) / name).exists():
                self.run.save(str(Path(run_dir) / name), base_path=str(run_dir), policy="now")
        self.run.finish(exit_code=0 if summary.get("status") == "finished" else 1)


KINDS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


class Loggers(Observer):
    """The trackers of one run; ``log`` each metrics row, ``close`` with the summary."""

    def __init__(self, names: Iterable[str], run_dir: Path, config: dict[str, Any], name: Optional[str] = None):
        self.active: list[Any] = []
        self.run_dir = Path(run_dir)
        name = name or Path(run_dir).name
        for kind in names:
            if kind == "csv":  # metrics.csv: always written by the runner
                continue
            try:
                self.active.append(KINDS[kind](Path(run_dir), config, name))
            except ImportError as err:
                self.close({"status": "failed"})
                raise FedrunError(f"logger={kind} needs {err.name or PACKAGES[kind]}, which is not installed: "
                                  f'pip install "fedrun[{kind}]" (or leave {kind} out of logger).') from None
            except Exception as err:  # noqa: BLE001 - a tracker's own failure (a server, a store): one sentence
                self.close({"status": "failed"})
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise FedrunError(f"logger={kind} could not start ({type(err).__name__}: {first[:300]}): "
                                  f"check its settings (e.g. MLFLOW_TRACKING_URI, WANDB_MODE=offline) or leave {kind} out of logger.") from err

    def row(self, round_idx: int, row: dict[str, Any]) -> None:
        self.log(row)

    def log(self, row: dict[str, Any]) -> None:
        for logger in self.active:
            logger.log(row)

    def close(self, summary: dict[str, Any]) -> None:
        for logger in self.active:
            logger.close(summary, self.run_dir)
        self.active = []


def _quiet_alembic() -> None:
    """MLflow's SQLite store logs each schema migration at INFO the first time: keep the run's log clean."""
    import logging

    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_loggers(names: Iterable[str], run_dir: Path, config: dict[str, Any], name: Optional[str] = None) -> Loggers:
    return Loggers(list(names), run_dir, config, name)
