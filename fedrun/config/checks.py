"""Value checks on a composed config: one sentence for the first impossible value.

Part of the spec reader (:mod:`fedrun.config.specs`): the schemas (:mod:`fedrun.config.schema`) catch
unknown keys and wrong types when Hydra composes; these catch values of the right type that cannot
run (participation 1.5, a negative lr, an interpolation that cannot be resolved, a group argument
outside the bounds its target declares, sizes the machine cannot hold).
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from omegaconf import DictConfig

from fedrun.config.schema import CONF_DIR, bounds_for, logger_names
from fedrun.config.sizes import check_sizes
from fedrun.errors import FedrunError


def check_held_out(test: float, val: float) -> None:
    """The per-client test and validation fractions (``client_test_fraction``, ``val_fraction``)."""
    if not (0.0 <= test < 1.0 and 0.0 <= val < 1.0 and test + val < 1.0):
        raise FedrunError(f"client_test_fraction={test} and val_fraction={val} are out of range: use fractions >= 0 "
                          f"whose sum is below 1 (e.g. client_test_fraction=0.2 val_fraction=0.1).")


# the modules each tracker imports (its extra's packages: mlflow's SQLite store needs sqlalchemy and alembic)
TRACKER_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "wandb": ("wandb",)}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_installed(names: list[str]) -> None:
    """One sentence naming the pip command when a tracker's packages are missing (found without
    importing them: cheap enough for the pre-check, before any run dir exists)."""
    import os

    needs = dict(TRACKER_MODULES)
    if "MLFLOW_TRACKING_URI" in os.environ:  # a server or file store of the user's: no SQLite needed
        needs["mlflow"] = ("mlflow",)
    for name in names:
        missing = [m for m in needs.get(name, ()) if not _installed(m)]
        if missing:
            raise FedrunError(f"logger={name} needs {', '.join(missing)}, which is not installed: "
                              f'pip install "fedrun[{name}]" (or leave {name} out of logger).')


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise FedrunError(message)


def validate(cfg: DictConfig) -> None:
    """Raise :class:`FedrunError` with one sentence for the first impossible value: an interpolation
    that cannot be resolved, a non-finite float anywhere, a group argument outside its target's
    bounds, an impossible top-level value."""
    check_finite(cfg)
    check_bounds(cfg)
    p = cfg.participation
    _check(0 < p <= 1, f"participation={p} is out of range: use the fraction of clients active per round, in (0, 1] (e.g. participation=0.1).")
    _check(cfg.num_clients >= 1, f"num_clients={cfg.num_clients} is impossible: use at least 1 client.")
    _check(cfg.rounds >= 1, f"rounds={cfg.rounds} is impossible: use at least 1 round.")
    _check(cfg.local_epochs >= 1, f"local_epochs={cfg.local_epochs} is impossible: use at least 1 epoch.")
    _check(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} is impossible: use a batch size of at least 1.")
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"lr={cfg.lr} is not a positive number: use a learning rate > 0 (e.g. lr=0.1).")
    _check(0 < cfg.lr_decay <= 1, f"lr_decay={cfg.lr_decay} is out of range: use a per-round decay factor in (0, 1] (1 = constant).")
    _check(cfg.weight_decay >= 0, f"weight_decay={cfg.weight_decay} is negative: use weight_decay >= 0.")
    _check(math.isfinite(cfg.clip_norm), f"clip_norm={cfg.clip_norm} is not finite: use a positive norm, or 0 to turn clipping off.")
    _check(cfg.clip_norm >= 0, f"clip_norm={cfg.clip_norm} is negative: use a positive norm, or 0 to turn clipping off.")
    _check(cfg.eval_every >= 1, f"eval_every={cfg.eval_every} is impossible: evaluate every 1 or more rounds.")
    _check(cfg.get("eval_all_every", 1) >= 1, f"eval_all_every={cfg.get('eval_all_every')} is impossible: evaluate the mean of all models every 1 or more rounds.")
    _check(cfg.seed >= 0, f"seed={cfg.seed} is negative: use a seed >= 0.")
    kind = str(getattr(cfg.get("lr_schedule", "exponential"), "value", cfg.get("lr_schedule", "exponential")))
    _check(kind == "exponential" or cfg.lr_decay == 1, f"lr_decay={cfg.lr_decay} only applies to lr_schedule=exponential: drop lr_decay, or use lr_schedule=exponential.")
    if kind == "multistep":
        steps = list(cfg.get("lr_milestones", ()))
        _check(all(0 < f < 1 for f in steps) and steps == sorted(steps), f"lr_milestones={steps} is not valid: use increasing fractions of the rounds in (0, 1), e.g. lr_milestones=[0.5,0.75].")
        factor = cfg.get("lr_factor", 0.1)
        _check(0 < factor <= 1, f"lr_factor={factor} is out of range: use the multiplier at each milestone, in (0, 1] (e.g. lr_factor=0.1).")
    for key in ("data_seed", "partition_seed"):
        value = cfg.get(key)
        _check(value is None or value >= 0, f"{key}={value} is negative: use a seed >= 0, or {key}=null to follow seed.")
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every={cfg.checkpoint_every} is negative: checkpoint every N >= 1 rounds, or 0 for only on SIGINT/SIGTERM.")
    _check(str(cfg.resume).lower() in ("auto", "true", "false"), f"resume={cfg.resume} is not valid: use resume=auto, resume=true or resume=false.")
    from omegaconf import ListConfig

    logger = cfg.get("logger")
    _check(logger is None or isinstance(logger, (str, ListConfig, list)),
           f"logger={logger} is not valid: give a logger name or a list of them (e.g. logger=tensorboard, logger=[tensorboard,mlflow]), or logger=[] for none.")
    check_installed(logger_names(logger))  # an unknown logger name, or one whose extra is missing: one sentence
    check_held_out(float(cfg.get("client_test_fraction", 0.0)), float(cfg.get("val_fraction", 0.0)))
    _check(cfg.get("finetune_steps", 0) >= 0, f"finetune_steps={cfg.get('finetune_steps')} is negative: use 0 (off) or a number of local SGD steps.")
    steps = cfg.get("finetune_steps", 0)
    _check(steps == 0 or float(cfg.get("client_test_fraction", 0.0)) > 0,  # a key that would do nothing here (issue 23)
           f"finetune_steps={steps} does nothing without client_test_fraction (the fine-tuned models are measured on each "
           "client's own test split): add client_test_fraction=0.2, or drop finetune_steps.")
    _check(cfg.get("threads") is None or cfg.threads >= 1, f"threads={cfg.get('threads')} is impossible: use threads=N with N >= 1, or threads=null to choose by model size.")
    f = cfg.divergence_factor
    _check(f == 0 or (f > 1 and math.isfinite(f)), f"divergence_factor={f} is out of range: use a factor > 1 over the initial model's loss (e.g. 100), or 0 to turn the check off.")
    data = cfg.get("data")
    check_sizes(int(cfg.num_clients), float(cfg.participation), str(getattr(cfg.sampling, "value", cfg.sampling)),
                None if data is None else dict(data))


GROUPS = ("algo", "data", "partition", "model", "engine", "hetero")


def _walk(node: Any, prefix: str = ""):
    """(dotted key, value) of every leaf of ``node`` (a DictConfig/ListConfig), resolving interpolations."""
    from omegaconf import ListConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        dotted = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}{'.' if prefix else ''}{key}"
        try:
            value = node[key]
        except InterpolationResolutionError as err:
            raw = OmegaConf.to_container(node, resolve=False)[key]
            reason = str(err).split("\n", 1)[0].rstrip(".")
            raise FedrunError(f"{dotted}={raw} cannot be resolved ({reason}): give {dotted} a plain value.") from None
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _walk(value, dotted)
        else:
            yield dotted, value


def check_finite(cfg: DictConfig) -> None:
    """Every float key (lists included, Hydra's own keys aside) must be a finite number."""
    from omegaconf import OmegaConf

    for key, value in _walk(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])):
        if isinstance(value, float) and not math.isfinite(value):
            raise FedrunError(f"{key}={value} is not a finite number: give {key} a finite value (conf/ lists its default).")


def check_bounds(cfg: DictConfig) -> None:
    """The group options' arguments within the bounds their targets declare (fedrun/config/bounds.py)."""
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        for name, bound in bounds_for(node._target_).items():
            value = node.get(name)
            if value is None:
                continue
            plain = list(value) if not isinstance(value, (int, float, str, bool)) else value
            if not bound.admits(plain):
                option = option_of(cfg, group)
                raise FedrunError(f"{group}.{name}={plain} is not valid: {group}={option} takes {bound.what} as {group}.{name}.")


def option_of(cfg: DictConfig, group: str) -> str:
    """The group option's name (``mlp``) from Hydra's choices, else its target's class name."""
    try:
        if "hydra" in cfg:
            return str(cfg.hydra.runtime.choices[group])
        from hydra.core.hydra_config import HydraConfig

        name = str(HydraConfig.get().runtime.choices[group])
        option = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text()) or {}
        if option.get("_target_") == cfg[group]._target_:  # Hydra's state is this run's
            return name
        raise LookupError(name)
    except Exception:  # noqa: BLE001 - a config composed without Hydra
        return str(cfg[group]._target_).rsplit(".", 1)[-1]
