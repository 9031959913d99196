"""fedrun from Python (a notebook, a script): compose a config, run it, get the metrics as a DataFrame.

    import fedrun
    df = fedrun.run(["algo=fedavg", "rounds=20"])          # one row per evaluated round (metrics.csv)
    df.attrs["summary"]["final_test_acc"], df.attrs["run_dir"]
    cfg = fedrun.compose(["data=mnist", "partition=iid"])  # the DictConfig the command line would build
    cfg.rounds = 5
    df = fedrun.run(cfg, run_dir="outputs/api/mnist_iid")

The overrides are those of the ``fedrun`` command (``group=option``, ``key=value``). A run writes
the same run directory as the command (``metrics.csv``, ``summary.json``, figures; by default under
``outputs/runs/<data>_<algo>/<time>``), and the same :class:`~fedrun.errors.FedrunError` sentences
are raised as exceptions. A run dir that already holds a finished run of the same config is not run
again: its metrics are returned. A run dir holding an unfinished run of it is resumed.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from fedrun.config.schema import CONF_DIR, register_configs

_REGISTERED = False


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The config of ``fedrun <overrides>`` (without Hydra's own ``hydra`` node), checked as the command checks it."""
    global _REGISTERED
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fedrun.config.checks import validate

    if not _REGISTERED:
        register_configs()
        _REGISTERED = True
    if GlobalHydra.instance().is_initialized():  # inside another Hydra app or after a failed compose
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, list(overrides))
    except Exception as err:  # noqa: BLE001 - an unknown key or option, a wrong type: the command's sentence
        from fedrun.cli.precheck import translate

        raise translate(err, list(overrides)) from None
    validate(cfg)
    return cfg


def default_run_dir(cfg: DictConfig) -> Path:
    data = str(cfg.data._target_).rsplit(".", 1)[-1].replace("load_", "").replace("make_", "")
    algo = str(cfg.algo._target_).rsplit(".", 1)[-1].lower()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return Path("outputs") / "runs" / f"{data}_{algo}" / stamp


def run(config: Union[Sequence[str], DictConfig] = (), run_dir: Optional[Union[str, Path]] = None) -> pd.DataFrame:
    """Run ``config`` (overrides or a composed :class:`DictConfig`) and return its metrics, one row per
    evaluated round; ``.attrs["summary"]`` is ``summary.json`` and ``.attrs["run_dir"]`` the run dir."""
    from fedrun.rundir.resume import RunFinished
    from fedrun.runner import run as run_rounds

    if isinstance(config, (str, bytes)):
        raise TypeError('fedrun.run takes a list of overrides (["algo=fedavg"]) or a DictConfig, not a string')
    cfg = config if isinstance(config, DictConfig) else compose(list(config))
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    path = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    try:
        summary = run_rounds(cfg, path)
    except RunFinished as done:
        summary = done.summary
    metrics = pd.read_csv(path / "metrics.csv")
    metrics.attrs["summary"] = summary
    metrics.attrs["run_dir"] = path
    return metrics
