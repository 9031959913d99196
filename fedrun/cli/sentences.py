"""Hydra's and OmegaConf's errors about a command line, as one sentence that names the key to change.

:func:`translate` words a composition failure (an unknown group option or key, a wrong type, an
invalid choice, a malformed override) with the choices or keys that would work, and a did-you-mean
for a typo; the CLI's precheck, the error boundary and ``fedrun.compose`` all use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from fedrun.config.schema import CONF_DIR, DISPLAY_KEYS, Config, option_names
from fedrun.errors import FedrunError

GROUPS = ("algo", "data", "partition", "model", "engine", "hetero")


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides, return_hydra_config=True)


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value_of(overrides: list[str], key: str) -> Optional[str]:
    for o in reversed(overrides):  # the last one wins, as in Hydra
        if "=" in o and _key_of(o) == key:
            return o.split("=", 1)[1]
    return None


def _top_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _group_keys(overrides: list[str], node: str, skip_key: str) -> tuple[str, list[str]]:
    """(where, keys) of config node ``node`` (``algo``, ``hydra.run``) composed without ``skip_key``'s overrides.

    ``where`` is ``algo=feddyn`` for a group, else the node's path.
    """
    others = [o for o in overrides if not (_key_of(o) == skip_key or _key_of(o).startswith(skip_key + "."))]
    top = node.split(".")[0]
    try:
        cfg = compose(others)
        option = cfg.hydra.runtime.choices.get(top) if top in GROUPS and node == top else None
        where = f"{node}={option}" if option else node
        value = OmegaConf.select(cfg, node)
        keys = sorted(k for k in value.keys() if k != "_target_" and k not in DISPLAY_KEYS) if isinstance(value, DictConfig) else []
        return where, keys
    except Exception:  # noqa: BLE001 - best effort: the message still names the key
        return node, []


def _choices(group: str) -> str:
    return ", ".join(option_names(group)) or "(none found)"


# Hydra options that only exist once a plugin is installed -> the fedrun extra that installs it (pyproject.toml)
PLUGIN_EXTRAS = {
    "hydra/sweeper/optuna": "optuna",
    "hydra/launcher/joblib": "launchers",
    "hydra/launcher/submitit_local": "launchers",
    "hydra/launcher/submitit_slurm": "launchers",
    "hydra/launcher/ray": "ray",
}


def _plugins_asked(overrides: list[str]) -> list[tuple[str, str]]:
    """(hydra group/option, extra) of the plugin options that a config group named on the command line
    (``+hparams_search=feddyn_optuna``) overrides in its defaults list."""
    import yaml

    out = []
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        path = CONF_DIR / key / f"{value}.yaml"
        if "/" in key or not value or not path.is_file():
            continue
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            for k, v in (entry.items() if isinstance(entry, dict) else []):
                option = f"{str(k).removeprefix('override ').strip().lstrip('/')}/{v}"
                if option in PLUGIN_EXTRAS:
                    out.append((option, PLUGIN_EXTRAS[option]))
    return out


def _plugin_missing(option: str, extra: str, overrides: list[str]) -> FedrunError:
    """``hydra/sweeper=optuna needs a Hydra plugin that is not installed (...): pip install "fedrun[optuna]"``."""
    group, _, name = option.rpartition("/")
    asked = "".join(f" ({o} asks for it)" for o in overrides if o.lstrip("+").startswith("hparams_search="))
    return FedrunError(f"{group}={name} needs a Hydra plugin that is not installed{asked}: pip install \"fedrun[{extra}]\".")


def translate(err: BaseException, overrides: list[str]) -> FedrunError:
    """One sentence for a Hydra/OmegaConf composition error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(err)
    asked = _plugins_asked(overrides) if "Could not override 'hydra/" in text else []
    if asked:  # the plugin's own sub-options are missing too
        option, extra = asked[0]
        return _plugin_missing(option, extra, overrides)
    if isinstance(err, OverrideParseException):
        m = re.search(r"override '(.*)'", text)
        bad = m.group(1) if m else " ".join(overrides)
        if "=" not in bad:
            return FedrunError(
                f"'{bad}' on the command line is not key=value: a value with spaces must be quoted "
                "(e.g. 'hydra.run.dir=\"my runs/a\"'), and every other argument needs key=value."
            )
        return FedrunError(f"cannot read the override '{bad}': write key=value (e.g. lr=0.1, algo=feddyn, partition.alpha=0.3).")
    if isinstance(err, MissingConfigException):
        missing = err.missing_cfg_file or ""
        group, _, name = missing.rpartition("/")
        if group:
            extra = PLUGIN_EXTRAS.get(f"{group}/{name}")
            if extra is not None:  # a Hydra plugin's option, whose package is not installed
                return _plugin_missing(missing, extra, overrides)
            options = list(err.options or []) or option_names(group)
            return FedrunError(f"{group}={name} is not an option of {group}: use one of {', '.join(options)}.")
        return FedrunError(f"config '{missing}' was not found: check the names given on the command line.")
    cause = err.__cause__ or err.__context__
    full_key = getattr(cause, "full_key", None)
    cause_text = str(cause).split("\n", 1)[0] if cause is not None else ""
    if full_key:
        group, _, leaf = full_key.rpartition(".")
        merging = re.search(r"Error merging override (.+?)=(.*)$", text.split("\n", 1)[0])
        value = merging.group(2) if merging else _value_of(overrides, full_key)
        if type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
            if not group:
                keys = _top_keys()
                close = difflib.get_close_matches(leaf, keys, n=1)
                hint = f"did you mean {close[0]}?" if close else f"the top-level keys are {', '.join(keys)}"
                return FedrunError(f"{leaf} is not a config key: {hint} (a group's keys take its name first, e.g. algo.alpha).")
            where, keys = _group_keys(overrides, group, full_key)
            close = difflib.get_close_matches(leaf, keys, n=1)
            valid = f"has keys: {', '.join(keys)}" if keys else "takes no keys"
            hint = f"did you mean {group}.{close[0]}? ({where} {valid})" if close else f"{where} {valid}"
            return FedrunError(f"{full_key} is not a key of {where}: {hint}.")
        if "is not Optional" in cause_text:
            return FedrunError(f"{full_key} cannot be null: give it a value (conf/ lists its default).")
        m = re.search(r"expected one of \[(.*)\]", cause_text)
        if m:
            return FedrunError(f"{full_key}={value} is not valid: use one of {m.group(1)}.")
        m = re.search(r"converted to (\w+)", cause_text)
        kind = {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false", "String": "a string"}.get(
            m.group(1) if m else "", "a " + (m.group(1).lower() if m else "value of another type")
        )
        if "valid bool" in cause_text:
            kind = "true or false"
        if not m and "ListConfig" in cause_text:
            kind = f"a list (e.g. {full_key}=[0.5,0.8]; one value as {full_key}=[0.5])"
        return FedrunError(f"{full_key}={value} has the wrong type: {full_key} takes {kind}.")
    if "Config group override must be" in text:
        group = next((_key_of(o) for o in overrides if _key_of(o) in GROUPS and o.split("=", 1)[1] in ("null", "")), "a group")
        return FedrunError(f"{group}=null is not an option: use one of {_choices(group) if group in GROUPS else 'the files in conf/'}.")
    first = (cause_text or text).split("\n", 1)[0].rstrip(".")
    return FedrunError(f"the command line cannot be composed into a config ({first}): check the overrides.")
