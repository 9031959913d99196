"""Config schemas registered with Hydra's ConfigStore, and value checks.

The YAML files in ``conf/`` are the registry. Every group option with a ``_target_`` gets a dataclass
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fedrun.config import CONF_DIR
from fedrun.errors import FedrunError



# Keys that change nothing a run computes (how it shows progress, where its inputs are found, when it
# checkpoints, how it is resumed or skipped, which device holds its client state, what the report
# counts). The group ``experiment`` names a bundle of the other keys; their values are compared.
NOT_RESULT_KEYS = (
    "experiment", "resume", "progress", "checkpoint_every", "targets", "skip_finished", "state_placement",
    "device", "data.root", "threads", "quiet", "logger", "keep_checkpoint",
    # fedrun-report's display keys of every group option (DISPLAY_KEYS below): label, color
    *(f"{group}.{key}" for group in ("algo", "data", "partition", "model", "engine") for key in ("label", "color")),
)
# Algorithm hyperparameters whose lowering typically calms a diverging run.
LOWERABLE = ("alpha", "mu", "server_lr", "tau")

NAMES = ("csv", "tensorboard", "mlflow", "wandb")


def logger_names(value: Any) -> list[str]:
    """``"tensorboard"``, ``["tensorboard", "mlflow"]``, ``None`` or ``[]`` -> a list of known names."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    names = [n.strip() for n in names if str(n).strip() not in ("", "none")]
    for name in names:
        if name not in NAMES:
            raise FedrunError(f"logger={name} is not a logger fedrun knows: use one or more of {', '.join(NAMES)} "
                              f"(several as logger=[tensorboard,mlflow]).")
    return list(dict.fromkeys(names))


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
    auto = "auto"  # the fastest that fits, from the memory estimate (fedrun/state/memory.py)
    device = "device"
    pinned = "pinned"
    mmap = "mmap"


class LrSchedule(str, enum.Enum):
    exponential = "exponential"  # lr * lr_decay^(round-1)
    multistep = "multistep"  # lr * lr_factor^(milestones passed)
    cosine = "cosine"  # cosine annealing over the rounds


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
    # issue 24: seeds of the data and of the partition (None: seed)
    data_seed: Optional[int] = None
    partition_seed: Optional[int] = None
    # issue 24: learning-rate schedules
    lr_schedule: LrSchedule = LrSchedule.exponential
    lr_milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_factor: float = 0.1


def choice(value: Any) -> str:
    """The name of an enum-typed config value (``Device.cpu`` or ``"cpu"`` -> ``"cpu"``)."""
    return str(getattr(value, "value", value))


def schema_for(target: str, group: str) -> type:
    """A dataclass with ``_target_`` and one field per config argument of ``target`` (its signature,
    cached without torch by :mod:`fedrun.config.signatures`)."""
    from fedrun.config import signatures

    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    fields += signatures.fields(signatures.signature(target), RUNTIME_ARGS[group])
    fields += [(k, Optional[str], field(default=None)) for k in DISPLAY_KEYS if k not in {f[0] for f in fields}]
    return dataclasses.make_dataclass(f"{target.rpartition('.')[2]}Schema", fields)


# Keys every group option may set for fedrun-report's tables and figures only (label: "FedDyn (ours)",
# color: "#D55E00"); never given to the target (build_object leaves them out).
DISPLAY_KEYS = ("label", "color")


def register_configs(conf_dir: Path = CONF_DIR) -> None:
    """Store the top-level schema and one generated schema per group option in ConfigStore, and the
    resolver ``${fedrun_not_result_keys:}`` (:data:`NOT_RESULT_KEYS`) the YAML uses."""
    if not OmegaConf.has_resolver("fedrun_not_result_keys"):
        OmegaConf.register_new_resolver("fedrun_not_result_keys", lambda: list(NOT_RESULT_KEYS))
    from fedrun.config import signatures

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    options = [(group, path.stem, (yaml.safe_load(path.read_text()) or {}).get("_target_"))
               for group in RUNTIME_ARGS for path in sorted((conf_dir / group).glob("*.yaml"))]
    signatures.warm([t for _, _, t in options if t])  # a stale or missing cache: every target read in one go
    for group, name, target in options:
        if target:
            cs.store(group=f"schema/{group}", name=name, node=schema_for(target, group))


def build_object(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a :class:`FedrunError` from the target through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if isinstance(node, DictConfig) and any(k in node for k in DISPLAY_KEYS):
        node = OmegaConf.masked_copy(node, [k for k in node.keys() if k not in DISPLAY_KEYS])
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
    from fedrun.config import signatures

    try:
        return signatures.bounds(signatures.signature(str(target)))
    except Exception:  # noqa: BLE001 - an unknown target fails later with its own sentence
        return {}


def option_names(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
