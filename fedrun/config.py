"""Config schemas registered with Hydra's ConfigStore, and value checks.

The YAML files in ``fedrun/conf/`` are the registry. Every group option with a ``_target_`` gets a dataclass
schema generated from its target's signature (names, types, defaults), stored as
``schema/<group>/<option>``; the YAML lists that schema first in its defaults
(``- /schema/<group>/<option>@_here_``). An unknown key or a
wrong type therefore fails when Hydra composes the config, naming the key. Values that are the right
type but impossible (participation 1.5, a negative lr) are caught by :func:`validate` with one
sentence that says what to change.

Arguments that the runner supplies at build time (the dataset's shape, the seed, the labels to
partition) are not config keys and are left out of the schemas (:data:`RUNTIME_ARGS`).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fedrun.errors import FedrunError

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package (pip install . without -e too)

# Arguments filled in by the runner, per group; never config keys.
RUNTIME_ARGS = {
    "algo": set(),
    "data": {"num_clients", "seed"},
    "partition": {"labels", "num_clients", "generator", "groups"},
    "model": {"input_shape", "num_classes"},
    "engine": set(),
}


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Sampling(str, enum.Enum):
    bernoulli = "bernoulli"  # default: an empty draw is redrawn from an independent stream
    fixed = "fixed"
    bernoulli_reference = "bernoulli_reference"  # the reference code: an empty draw takes the next round's


class StatePlacement(str, enum.Enum):
    auto = "auto"  # the fastest that fits, from the memory estimate (fedrun/memory.py)
    device = "device"
    pinned = "pinned"
    mmap = "mmap"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class OnNonfinite(str, enum.Enum):
    stop = "stop"
    drop = "drop"


@dataclass
class Config:
    """Top-level keys (the groups are filled in by their own schemas)."""

    algo: Any = MISSING
    data: Any = MISSING
    partition: Any = MISSING
    model: Any = MISSING
    engine: Any = MISSING
    participation: float = 0.1
    sampling: Sampling = Sampling.bernoulli
    num_clients: int = 100
    rounds: int = 100
    local_epochs: int = 10
    batch_size: int = 10
    lr: float = 0.1
    lr_decay: float = 1.0
    weight_decay: float = 1e-5
    clip_norm: float = 10.0
    seed: int = 0
    device: Device = Device.auto
    eval_every: int = 1
    eval_active: bool = True
    eval_all: bool = True
    progress: Optional[bool] = None
    checkpoint_every: int = 10
    resume: str = "auto"
    deterministic: bool = False
    precision: Precision = Precision.fp32
    on_nonfinite: OnNonfinite = OnNonfinite.stop
    divergence_factor: float = 100.0
    targets: List[float] = field(default_factory=list)
    skip_finished: bool = False
    state_placement: StatePlacement = StatePlacement.auto
    threads: Optional[int] = None
    quiet: bool = False
    keep_checkpoint: bool = False
    logger: Any = field(default_factory=list)
    client_test_fraction: float = 0.0
    val_fraction: float = 0.0
    finetune_steps: int = 0


def choice(value: Any) -> str:
    """The name of an enum-typed config value (``Device.cpu`` or ``"cpu"`` -> ``"cpu"``)."""
    return str(getattr(value, "value", value))


def _annotation(tp: Any) -> Any:
    """Map a target's type hint onto one OmegaConf understands."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:  # a Bound (fedrun/bounds.py) is checked by validate, not by the schema
        return _annotation(args[0])
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return Optional[_annotation(inner[0])]
        return Any
    if origin in (list, tuple, typing.Sequence, List) or tp in (list, tuple):
        item = args[0] if args and args[0] is not Ellipsis else Any
        return List[_annotation(item)] if item in (int, float, str, bool) else List[Any]
    if tp in (int, float, str, bool) or (inspect.isclass(tp) and issubclass(tp, enum.Enum)):
        return tp
    return Any


def schema_for(target: str, group: str) -> type:
    """A dataclass with ``_target_`` and one field per config argument of ``target``."""
    module_name, _, attr = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    func = obj.__init__ if inspect.isclass(obj) else obj
    hints = typing.get_type_hints(func, include_extras=True)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    for name, param in inspect.signature(obj).parameters.items():
        if name in RUNTIME_ARGS[group] or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        tp = _annotation(hints.get(name, Any))
        default = param.default
        if default is inspect.Parameter.empty:
            spec = field(default=MISSING)
        elif isinstance(default, (list, tuple)):
            spec = field(default_factory=lambda d=default: list(d))
        else:
            spec = field(default=default)
        fields.append((name, tp, spec))
    return dataclasses.make_dataclass(f"{attr}Schema", fields)


def register_configs(conf_dir: Path = CONF_DIR) -> None:
    """Store the top-level schema and one generated schema per group option in ConfigStore, and the
    resolver ``${fedrun_not_result_keys:}`` (:data:`fedrun.specs.NOT_RESULT_KEYS`) the YAML uses."""
    from fedrun.specs import NOT_RESULT_KEYS

    if not OmegaConf.has_resolver("fedrun_not_result_keys"):
        OmegaConf.register_new_resolver("fedrun_not_result_keys", lambda: list(NOT_RESULT_KEYS))
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group in RUNTIME_ARGS:
        for path in sorted((conf_dir / group).glob("*.yaml")):
            content = yaml.safe_load(path.read_text()) or {}
            target = content.get("_target_")
            if target:
                cs.store(group=f"schema/{group}", name=path.stem, node=schema_for(target, group))


def build_object(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a :class:`FedrunError` from the target through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, FedrunError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def bounds_for(target: str) -> dict[str, Any]:
    """``{argument: Bound}`` that ``target``'s signature declares (``Annotated[..., Bound(...)]``)."""
    from fedrun.bounds import Bound

    module_name, _, attr = str(target).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj, include_extras=True)
    except Exception:  # noqa: BLE001 - an unknown target fails later with its own sentence
        return {}
    out = {}
    for name, tp in hints.items():
        found = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Bound)]
        if found:
            out[name] = found[0]
    return out


def option_names(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


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
    _check(cfg.seed >= 0, f"seed={cfg.seed} is negative: use a seed >= 0.")
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every={cfg.checkpoint_every} is negative: checkpoint every N >= 1 rounds, or 0 for only on SIGINT/SIGTERM.")
    _check(str(cfg.resume).lower() in ("auto", "true", "false"), f"resume={cfg.resume} is not valid: use resume=auto, resume=true or resume=false.")
    from fedrun.loggers import logger_names
    from fedrun.specs import read_client_eval

    from omegaconf import ListConfig

    logger = cfg.get("logger")
    _check(logger is None or isinstance(logger, (str, ListConfig, list)),
           f"logger={logger} is not valid: give a logger name or a list of them (e.g. logger=tensorboard, logger=[tensorboard,mlflow]), or logger=[] for none.")
    logger_names(logger)  # an unknown logger name: one sentence
    read_client_eval(cfg)  # held-out fractions out of range: one sentence
    _check(cfg.get("finetune_steps", 0) >= 0, f"finetune_steps={cfg.get('finetune_steps')} is negative: use 0 (off) or a number of local SGD steps.")
    _check(cfg.get("threads") is None or cfg.threads >= 1, f"threads={cfg.get('threads')} is impossible: use threads=N with N >= 1, or threads=null to choose by model size.")
    f = cfg.divergence_factor
    _check(f == 0 or (f > 1 and math.isfinite(f)), f"divergence_factor={f} is out of range: use a factor > 1 over the initial model's loss (e.g. 100), or 0 to turn the check off.")
    from fedrun.sizes import check_sizes

    check_sizes(cfg)


GROUPS = ("algo", "data", "partition", "model", "engine")


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
    """The group options' arguments within the bounds their targets declare (fedrun/bounds.py)."""
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
