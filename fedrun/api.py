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
import os
import threading
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


_COMPOSING = threading.Lock()  # Hydra's global state: one compose at a time in a process


def _checked_config(config: object) -> DictConfig:
    """A composed, checked config from ``config`` (overrides or a DictConfig), else one sentence."""
    from fedrun.errors import FedrunError

    if isinstance(config, DictConfig):
        return _checked_dictconfig(config)
    if isinstance(config, (str, bytes)) or not isinstance(config, (list, tuple)) or not all(isinstance(o, str) for o in config):
        shown = repr(config) if len(repr(config)) < 60 else type(config).__name__
        raise FedrunError(f'fedrun.run takes a list of overrides (e.g. ["algo=fedavg", "rounds=20"]) or a DictConfig '
                          f"from fedrun.compose, not {shown}.")
    with _COMPOSING:
        return compose(list(config))


def _checked_dictconfig(cfg: DictConfig) -> DictConfig:
    """A DictConfig given to fedrun.run gets the command's checks: every key the schema has, the
    values in range; anything else (a key set to None, a missing group) is one sentence."""
    from fedrun.errors import FedrunError

    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    with _COMPOSING:
        reference = compose([])
    missing = sorted(set(reference.keys()) - set(cfg.keys()))
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise FedrunError(f"the config given to fedrun.run lacks the keys {', '.join(missing[:6])}{more}: build it with fedrun.compose([...]) "
                          "and change values on that.")
    for group in ("data", "partition", "model", "algo", "engine"):
        if group in reference and not isinstance(cfg.get(group), DictConfig):
            raise FedrunError(f"{group}={cfg.get(group)} in the config given to fedrun.run is not an option of {group}: "
                              f"choose it with fedrun.compose(['{group}=...']).")
    from fedrun.config.checks import validate

    try:
        validate(cfg)
    except FedrunError:
        raise
    except Exception as err:  # noqa: BLE001 - a value of the wrong type set by hand
        raise FedrunError(f"the config given to fedrun.run does not check ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): "
                          "build it with fedrun.compose([...]) and change values on that.") from None
    return cfg


def _checked_run_dir(run_dir: object, cfg: DictConfig) -> Path:
    from fedrun.errors import FedrunError

    if run_dir is None:
        return default_run_dir(cfg)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise FedrunError(f"run_dir={run_dir!r} is not a path: give fedrun.run a directory (e.g. run_dir='runs/my_run'), or leave it out.")
    if not str(run_dir).strip() or str(run_dir).strip() == ".":
        raise FedrunError("run_dir='' is empty: give fedrun.run a directory (e.g. run_dir='runs/my_run'), or leave it out "
                          "for a new timestamped one.")
    return Path(run_dir)


def run(config: Union[Sequence[str], DictConfig] = (), run_dir: Optional[Union[str, Path]] = None) -> pd.DataFrame:
    """Run ``config`` (overrides or a composed :class:`DictConfig`) and return its metrics, one row per
    evaluated round; ``.attrs["summary"]`` is ``summary.json`` and ``.attrs["run_dir"]`` the run dir."""
    from fedrun.errors import FedrunError
    from fedrun.rundir.resume import RunFinished
    from fedrun.runner import run as run_rounds

    cfg = _checked_config(config)
    path = _checked_run_dir(run_dir, cfg)
    try:
        summary = run_rounds(cfg, path)
    except RunFinished as done:
        summary = done.summary
    except FedrunError:
        raise
    except Exception as err:  # noqa: BLE001 - the command's sentence for everything else too (a full disk, a bug)
        from fedrun.cli.boundary import describe

        raise FedrunError(describe(err, path)[0]) from err
    metrics = pd.read_csv(path / "metrics.csv")
    metrics.attrs["summary"] = summary
    metrics.attrs["run_dir"] = path
    return metrics
