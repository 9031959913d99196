"""Checks the command line before Hydra starts a run: bad overrides become one sentence each.

:func:`precheck` composes the config from the command-line overrides with Hydra's compose API
(every combination's values one at a time for ``-m`` sweeps), so that an unknown group option, an
unknown key, a wrong type or an invalid choice is reported as one sentence, before Hydra creates a
run dir. It also runs :func:`fedrun.config.schema.validate`, checks that the output dir can be written,
and applies ``resume``: a named run dir that holds a finished run of the same config is reported
as finished (:class:`~fedrun.rundir.resume.RunFinished`), one whose config differs is refused, and
``resume=true`` without a named dir adds ``hydra.run.dir=<the latest matching run dir>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from fedrun.rundir import resume
from fedrun.config import specs
from fedrun.config.checks import validate
from fedrun.cli.sentences import GROUPS, _key_of, _top_keys, _value_of, compose, translate  # noqa: F401  (translate: also as precheck.*)
from fedrun.config.schema import CONF_DIR, DISPLAY_KEYS  # the task's groups (sweep_jobs), display keys (check_extra_keys)
from fedrun.errors import FedrunError

# Hydra flags after which fedrun does not interfere (help, printing the config, completion, ...).
PASSTHROUGH_FLAGS = (
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
    "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun",
)


@dataclasses.dataclass
class Prepared:
    argv: list[str]  # the arguments to give Hydra (maybe with hydra.run.dir added)
    run_dir: Optional[Path] = None  # the explicit or found run dir of a single run
    existed: bool = False  # whether that dir existed before this command
    sweep_dir: Optional[Path] = None  # a sweep's dir as the pre-check resolved it (its failed jobs are listed at the end)


def split_args(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, passthrough) of Hydra's command-line arguments."""
    passthrough = any(a.split("=", 1)[0] in PASSTHROUGH_FLAGS for a in argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    return overrides, multirun, passthrough


def check_extra_keys(cfg: DictConfig) -> None:
    """Keys added with ``+key=value`` that no schema knows would be silently ignored: refuse them."""
    known = set(_top_keys()) | {"hydra"}
    removed = [k for k in _top_keys() if k not in cfg]
    if removed:
        raise FedrunError(f"{removed[0]} was removed from the config (~{removed[0]}) but every run needs it: drop ~{removed[0]}.")
    extra = [k for k in cfg.keys() if k not in known]
    if extra:
        close = difflib.get_close_matches(str(extra[0]), sorted(known - {"hydra"}), n=1)
        hint = f"did you mean {close[0]}" if close else "conf/config.yaml lists the keys"
        raise FedrunError(f"{extra[0]} is not a config key fedrun uses ({hint}): drop +{extra[0]}.")
    for group in GROUPS:
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is None or not dataclasses.is_dataclass(schema):
            continue
        fields = {f.name for f in dataclasses.fields(schema)}
        unknown = [k for k in node.keys() if k not in fields]
        if unknown:
            option = cfg.hydra.runtime.choices.get(group, "?")
            raise FedrunError(f"{group}.{unknown[0]} is not a key of {group}={option}: its keys are {', '.join(sorted(fields - {'_target_', *DISPLAY_KEYS}))}.")


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every value of every sweep once (others at their first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override():
            try:
                key = text.split("=", 1)[0]
                values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - sweeps Hydra cannot list (globs, intervals): leave to Hydra
                values.append([])
        else:
            values.append([text])
    base = [v[0] for v in values if v]
    variants = [base]
    for i, vs in enumerate(values):
        for v in vs[1:]:
            variant = [vv[0] for vv in values[:i] if vv] + [v] + [vv[0] for vv in values[i + 1 :] if vv]
            variants.append(variant)
    return variants


def _groups() -> list[str]:
    """The task's config groups (the folders of conf/ but hydra/ and schema)."""
    return sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name not in ("hydra", "schema"))


def sweep_jobs(argv: list[str], overrides: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """(argv, overrides, variants to compose) of a ``-m`` sweep under fedrun's sweeper (:mod:`fedrun.cli.sweeper`).

    A single value of a key of a swept group that the group's default option lacks
    (``algo=fedprox,fedavg algo.mu=0.1``, default FedDyn) becomes a one-value sweep
    (``algo.mu=choice(0.1)``), so that Hydra's first composition (sweeps left out) does not apply it
    to an option without it; the sweeper then drops it where it does not apply.
    The variants are jobs of the sweeper's own list that together hold every value; a key that
    applies to no chosen option raises the sweeper's sentence here, before Hydra starts.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fedrun.cli import sweeper

    groups = _groups()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # noqa: BLE001 - every parse error gets one sentence
        raise translate(err, overrides) from None
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override() and o.get_key_element() in groups}
    single = {text: text.split("=", 1)[0] for text, o in zip(overrides, parsed)
              if sweeper.group_of(text.split("=", 1)[0], groups) in swept and not o.is_sweep_override() and "=" in text}
    base = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override() and o not in single]
    try:
        cfg = compose(base)
    except Exception as err:  # noqa: BLE001 - every composition error gets one sentence
        raise translate(err, base) from None
    # only where the default option lacks the key: Hydra re-reads a one-value sweep's value unquoted
    rewritten = {text: f"{key}=choice({text.split('=', 1)[1]})" for text, key in single.items() if not sweeper.has_key(cfg, key)}
    argv = [rewritten.get(a, a) for a in argv]
    overrides = [rewritten.get(o, o) for o in overrides]
    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "").endswith("FedrunSweeper"):
        return argv, overrides, sweep_variants(overrides)  # another sweeper (Optuna): its own rules
    if importlib.util.find_spec("hydra_plugins.fedrun_sweeper") is None:  # an install from before the sweeper
        raise FedrunError("fedrun's sweeper (hydra_plugins.fedrun_sweeper) is not installed: run `pip install -e .` "
                          "again in the checkout, or sweep with Hydra's own (hydra/sweeper=basic).")
    params = [f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()]
    try:
        combos = sweeper.product(params + overrides)
    except Exception:  # noqa: BLE001 - sweeps the basic sweeper cannot list: Hydra says why
        return argv, overrides, sweep_variants(overrides)
    jobs = sweeper.plan(combos, sweeper.groups_of(cfg), sweeper.cached(compose)).jobs
    return argv, overrides, sweeper.covering(jobs)


def ensure_writable(path: Path, key: str) -> None:
    """Refuse an output dir that cannot be created or written, before Hydra tries (the dirs this
    creates to find out are removed again)."""
    if not str(path).strip() or str(path) == ".":
        raise FedrunError(f"{key}= is empty: give it a directory (e.g. {key}=runs/my_run), or leave it out for a new timestamped one.")
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FedrunError(f"{key}={path} cannot be created because {probe} is a file: choose another {key}.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FedrunError(f"{key}={path} is not writable ({probe} does not allow writing): choose another {key}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".fedrun-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise FedrunError(f"{key}={path} cannot be written ({err.strerror or type(err).__name__}): choose another {key}.") from None
    finally:
        made = path
        while made != probe and made.exists():  # remove what the probe created, innermost first
            try:
                made.rmdir()
            except OSError:
                break
            made = made.parent


BOOL_WORDS = ("true", "false")


def check_bool_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """A true/false key given anything but true or false (OmegaConf would read ``2`` as true)."""
    for o in overrides:
        if "=" not in o or o.startswith("hydra"):
            continue
        key, value = _key_of(o), o.split("=", 1)[1]
        try:
            current = OmegaConf.select(cfg, key)
        except Exception:  # noqa: BLE001 - not a plain key (a group choice)
            continue
        if isinstance(current, bool) and value.strip().lower() not in BOOL_WORDS:
            raise FedrunError(f"{key}={value} is not valid: {key} takes true or false.")


def _resolved(cfg: DictConfig, key: str) -> Path:
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return Path(str(OmegaConf.select(cfg, key)))


def precheck(argv: list[str]) -> Prepared:
    """Compose and check the command line; raise FedrunError / RunFinished, or return what to run."""
    overrides, multirun, passthrough = split_args(argv)
    if passthrough:
        return Prepared(argv)
    if multirun:
        argv, overrides, variants = sweep_jobs(argv, overrides)
    else:
        variants = [overrides]
    cfg: Optional[DictConfig] = None
    for variant in variants:
        try:
            composed = compose(variant)
        except FedrunError:
            raise
        except Exception as err:  # noqa: BLE001 - every composition error gets one sentence
            raise translate(err, variant) from None
        check_extra_keys(composed)
        check_bool_overrides(composed, variant)
        validate(composed)
        cfg = cfg or composed
    assert cfg is not None
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        given = _value_of(overrides, key)
        if given is not None and not given.strip():
            ensure_writable(Path(""), key)  # refuses an empty dir: it would mean the current directory
    if multirun:
        sweep_dir = _resolved(cfg, "hydra.sweep.dir")
        ensure_writable(sweep_dir, "hydra.sweep.dir")
        return Prepared(argv, sweep_dir=sweep_dir)
    explicit = any(_key_of(o) == "hydra.run.dir" for o in overrides)
    run_dir = _resolved(cfg, "hydra.run.dir")
    wanted = specs.read_resume(cfg)
    if explicit and run_dir.is_dir():
        for name in ("cli.log", "run.lock", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"):
            if (run_dir / name).exists() and not (run_dir / name).is_file():  # Hydra or the lock would fail on it
                raise FedrunError(f"{run_dir / name} is not a file, so this run dir cannot be used: remove it, or pick another hydra.run.dir.")
    if explicit and run_dir.is_dir() and wanted.mode != "false":
        # first: a finished run says "nothing to do" even where nothing can be written (a read-only copy)
        resume.decide(wanted, run_dir, clear=False)
    ensure_writable(run_dir, "hydra.run.dir")
    if explicit:
        return Prepared(argv, run_dir, run_dir.exists())
    if wanted.mode == "true":
        found = resume.find_resumable(wanted, run_dir.parent)
        if found is None:
            raise FedrunError(
                f"resume=true found no checkpoint or finished run of this config under {run_dir.parent}: "
                "name the run dir with hydra.run.dir=..., or drop resume=true to start a new run."
            )
        resume.decide(wanted, found, clear=False)
        return Prepared([*argv, f"hydra.run.dir={found}"], found, True)
    return Prepared(argv, None, False)


def with_run_dir(prepared: Any) -> Any:
    """``prepared`` with an explicit ``hydra.run.dir`` (its own, or the one Hydra would make now)."""
    overrides, multirun, passthrough = split_args(prepared.argv)
    if multirun:
        raise FedrunError("a run under torchrun is one run: drop -m/--multirun (sweep over runs with hydra/launcher=... instead).")
    if passthrough or any(_key_of(o) == "hydra.run.dir" for o in overrides):
        return prepared
    cfg = compose(overrides)
    run_dir = _resolved(cfg, "hydra.run.dir").absolute()
    prepared.argv = [*prepared.argv, f"hydra.run.dir={run_dir}"]
    prepared.run_dir = run_dir
    return prepared
