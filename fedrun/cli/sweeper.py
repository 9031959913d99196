"""fedrun's default sweeper: Hydra's BasicSweeper, where a key of an option's own hyperparameters
applies only to the jobs whose chosen option has it.

    fedrun -m algo=feddyn,fedprox,fedavg algo.alpha=0.1,0.01 algo.mu=0.01,0.001 seed=0,1

is the cartesian product of 3 x 2 x 2 x 2 = 24 combinations; ``algo.alpha`` is a key of FedDyn only
and ``algo.mu`` of FedProx only, so a FedAvg job keeps neither, a FedDyn job no ``algo.mu``, and the
combinations that then coincide are one job: 2 x 2 (FedDyn) + 2 x 2 (FedProx) + 2 (FedAvg) = 10 jobs.
The same holds for every config group (``partition=iid,dirichlet partition.alpha=0.3,0.6``: 3
settings) and for the sweeps of an experiment yaml's ``hydra.sweeper.params``. Before any job it
prints one line with the job count and what it dropped; a key that applies to none of the chosen
options stops the sweep with one sentence (:class:`~fedrun.errors.FedrunError`).

Only the job list changes: the jobs go to the configured launcher (basic, joblib, submitit, Ray)
as BasicSweeper's do. ``conf/hydra/sweeper/fedrun.yaml`` makes this the default; another sweeper
(``override /hydra/sweeper: optuna``) replaces it as usual. :func:`plan` is the pure part, shared by
the sweeper and by the command-line pre-check (:mod:`fedrun.cli.precheck`), which tries the jobs
before Hydra starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from fedrun.errors import FedrunError

_ABSENT = object()


def key_of(override: str) -> str:
    return override.split("=", 1)[0]


def group_of(key: str, groups: Sequence[str]) -> Optional[str]:
    """``algo`` for ``algo.alpha`` when ``algo`` is a config group; None for a top-level key, a group
    choice itself, ``hydra.*`` and keys added or deleted with ``+``/``~``."""
    if "." not in key or key[0] in "+~" or key.startswith("hydra."):
        return None
    head = key.split(".", 1)[0]
    return head if head in groups else None


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the composed ``cfg`` has ``key`` (a key whose value is null counts)."""
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT


@dataclass
class Plan:
    """The jobs of a sweep and which option keys were dropped from which jobs."""

    jobs: List[List[str]]
    combinations: int
    kept: dict[str, list[str]] = field(default_factory=dict)  # group key -> the options it applies to
    dropped: dict[str, list[str]] = field(default_factory=dict)  # group key -> the options it was dropped for

    def line(self) -> str:
        """``fedrun: sweep of 10 jobs (24 combinations; algo.alpha applies to feddyn only, ...)``."""
        text = f"fedrun: sweep of {len(self.jobs)} job{'s' if len(self.jobs) != 1 else ''}"
        notes = [f"{k} applies to {', '.join(self.kept[k])} only" for k in self.dropped]
        if notes:
            text += f" ({self.combinations} combinations; {'; '.join(notes)})"
        return text


def plan(combinations: Sequence[Sequence[str]], groups: Mapping[str, str],
         option_has: Callable[[tuple[str, ...], str], bool]) -> Plan:
    """Drop from each combination the option keys its chosen options lack; merge the duplicates.

    ``combinations``: override lists (BasicSweeper's cartesian product); ``groups``: each config
    group's choice when a combination does not name one (the composed config's
    ``hydra.runtime.choices``); ``option_has(choice_overrides, key)``: whether the config composed
    with those group choices has ``key``. Raises FedrunError for a key that applies to no job.
    """
    jobs: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    kept: dict[str, set[str]] = {}
    dropped: dict[str, set[str]] = {}
    order: list[str] = []
    for combo in combinations:
        choice_overrides = tuple(o for o in combo if key_of(o) in groups)
        chosen = {**groups, **{key_of(o): o.split("=", 1)[1] for o in choice_overrides}}
        job = []
        for o in combo:
            key = key_of(o)
            group = group_of(key, list(groups))
            if group is not None:
                if key not in order:
                    order.append(key)
                if not option_has(choice_overrides, key):
                    dropped.setdefault(key, set()).add(str(chosen[group]))
                    continue
                kept.setdefault(key, set()).add(str(chosen[group]))
            job.append(o)
        if tuple(job) not in seen:
            seen.add(tuple(job))
            jobs.append(job)
    for key in order:
        if key in dropped and key not in kept:
            group = key.split(".", 1)[0]
            options = ",".join(sorted(dropped[key]))
            raise FedrunError(f"{key} is a key of none of the chosen options {group}={options}: drop {key}, "
                              f"or add a {group} option that has it to the sweep.")
    return Plan(jobs, len(combinations), {k: sorted(v) for k, v in kept.items()},
                {k: sorted(dropped[k]) for k in order if k in dropped and k in kept})


def product(overrides: Sequence[str]) -> list[list[str]]:
    """BasicSweeper's cartesian product of ``overrides`` (``a=1,2 b=3`` -> ``[[a=1, b=3], [a=2, b=3]]``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return BasicSweeper.split_arguments(parsed, None)[0]


def groups_of(cfg: DictConfig) -> dict[str, str]:
    """The config groups of the task (not ``hydra/...``) and their choices in ``cfg``."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    return {str(k): str(v) for k, v in choices.items() if "/" not in str(k)}


def cached(compose: Callable[[list[str]], DictConfig]) -> Callable[[tuple[str, ...], str], bool]:
    """``option_has`` for :func:`plan` from a compose function, one composition per set of choices."""
    configs: dict[tuple[str, ...], DictConfig] = {}

    def option_has(choice_overrides: tuple[str, ...], key: str) -> bool:
        if choice_overrides not in configs:
            configs[choice_overrides] = compose(list(choice_overrides))
        return has_key(configs[choice_overrides], key)

    return option_has


class FedrunSweeper(BasicSweeper):
    """BasicSweeper whose job list leaves out the option keys a job's options lack (:func:`plan`)."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None) -> None:
        # BasicSweeper.__init__ calls super(BasicSweeper, self) through its module's global, which Hydra's
        # plugin scan re-executes (a new class): after an earlier import of this module that no longer
        # matches this class's base, so its attributes are set here.
        Sweeper.__init__(self)
        self.overrides = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context = None
        self.config = None
        self.launcher = None

    def split_arguments(self, overrides: List[Any], max_batch_size: Optional[int]) -> List[List[List[str]]]:  # type: ignore[override]
        combos = BasicSweeper.split_arguments(overrides, None)[0]
        loader = self.hydra_context.config_loader
        swept = plan(combos, groups_of(self.config), cached(lambda choices: loader.load_sweep_config(self.config, choices)))
        print(swept.line(), flush=True)
        if max_batch_size is None or max_batch_size == -1:
            return [swept.jobs]
        return [swept.jobs[i : i + max_batch_size] for i in range(0, len(swept.jobs), max_batch_size)]


def covering(jobs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Jobs that together hold every override of ``jobs`` at least once (the pre-check composes these)."""
    seen: set[str] = set()
    out = []
    for job in jobs:
        if not seen.issuperset(job):
            out.append(list(job))
            seen.update(job)
    return out


__all__ = ["FedrunSweeper", "Plan", "plan", "product", "groups_of", "cached", "covering"]
