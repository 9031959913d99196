"""A run's setting read from its config: which keys tell the runs apart, the run's values of them,
its display labels (``FedDyn α=0.03``, ``Dir(0.3), p=0.1``) and its place in a table (numeric order,
FedAvg first). A run is anything with ``.config``, the flat config :mod:`fedrun.report.runs` reads."""

from __future__ import annotations

from typing import Any, Sequence

from fedrun.config.schema import NOT_RESULT_KEYS
from fedrun.report.tables import SEED_KEYS


def groups_of(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config groups of the runs: the keys with a ``<group>._target_``."""
    return sorted({k[: -len("._target_")] for c in configs for k in c if k.endswith("._target_") and k.count(".") == 1})


def varying_keys(runs: Sequence[Any]) -> list[str]:
    """The keys that tell the runs' settings apart: the run's setting is its config, not its name.

    A group (``algo``) varies when its options' targets differ; an option's own key (``algo.alpha``)
    when it differs between runs of the same target (FedDyn α=0.01 and α=0.03; a key the other
    options lack is absent there, not "empty"); any other key when its values differ. Keys that
    change no result (:data:`~fedrun.config.schema.NOT_RESULT_KEYS`) and ``hydra.*`` never count.
    """
    configs = [r.config for r in runs if r.config]
    groups = groups_of(configs)
    keys: list[str] = []
    for key in sorted({k for c in configs for k in c}):
        if key in NOT_RESULT_KEYS or key.startswith("hydra.") or key in groups:
            continue
        head = key.split(".", 1)[0]
        if key == f"{head}._target_" and head in groups:
            if len({repr(c.get(key)) for c in configs}) > 1:
                keys.append(head)
            continue
        by_target: dict[str, set[str]] = {}
        for c in configs:
            if key in c:
                by_target.setdefault(repr(c.get(f"{head}._target_")) if head in groups else "", set()).add(repr(c[key]))
        if any(len(v) > 1 for v in by_target.values()):
            keys.append(key)
    return keys


def _number(value: Any) -> tuple:
    """A sort key that orders numbers as numbers (1 < 10) and puts them before text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def setting_of(run: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The run's values of the setting ``keys`` (a group by its target), without the keys it lacks and the seed."""
    out = {}
    for k in keys:
        if k in SEED_KEYS:
            continue
        name = f"{k}._target_" if f"{k}._target_" in run.config else k
        if name in run.config:
            out[k] = run.config[name]
    return out


def labels_of(run: Any, keys: Sequence[str]) -> tuple[str, str]:
    """(method, setting) display labels: ``FedDyn α=0.03`` and ``Dir(0.3), p=0.1`` (a yaml's ``label:`` first)."""
    from fedrun.report import style as figures

    cfg = run.config
    params = {k.split(".", 1)[1]: cfg[k] for k in keys if k.startswith("algo.") and k in cfg}
    base = str(cfg["algo.label"]) if cfg.get("algo.label") else figures.algo_label(algo_name(run))
    method = " ".join([base, *figures.param_parts(params)])
    parts = []
    groups = groups_of([cfg])
    for group in [g for g in ("data", "partition", "model", "engine") if g in groups] + [g for g in groups if g not in ("algo", "data", "partition", "model", "engine")]:
        if not any(k == group or k.startswith(group + ".") for k in keys):
            continue
        own = {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith(group + ".") and k.count(".") == 1
               and not k.endswith(("._target_", ".label", ".color"))}
        if cfg.get(f"{group}.label"):
            parts.append(str(cfg[f"{group}.label"]))
        elif group == "partition":
            parts.append(figures.partition_label(cfg.get("partition._target_", cfg.get("partition")), own))
        else:
            varying = [figures.key_label(k.split(".", 1)[1], cfg[k]) for k in keys if k.startswith(group + ".") and k in cfg]
            parts.append(" ".join([str(cfg.get(group, "")), *varying]).strip())
    parts += [figures.key_label(k, cfg[k]) for k in keys if "." not in k and k not in groups and k not in SEED_KEYS and k in cfg]
    return method, ", ".join(p for p in parts if p)


def sort_key(run: Any, keys: Sequence[str]) -> tuple:
    """Settings in numeric order (0.01 < 0.1 < 1; seed 2 < 10), the problem first, then the method
    (FedAvg, then fedrun's other algorithms in their figure order, others by name), then the seed."""
    from fedrun.report import style as figures

    families = ["fedavg", *(f for f in figures.ALGO_STYLE if f != "fedavg")]  # the baseline first
    problem = tuple(_number(run.config.get(k)) for k in keys if k != "algo" and not k.startswith("algo.") and k not in SEED_KEYS)
    family = figures.algo_family(run.config.get("algo._target_", run.config.get("algo", "")))
    method = (families.index(family) if family in families else len(families), family,
              tuple(_number(run.config.get(k)) for k in keys if k.startswith("algo.")))
    return problem, method, _number(run.config.get("seed"))


def _order(keys: list[str]) -> list[str]:
    """Groups first (data, partition, model, algo, engine), each followed by its own keys, then the
    other keys, seed last."""
    groups = ("data", "partition", "model", "algo", "engine")
    first = [k for g in groups for k in keys if k == g or k.startswith(g + ".")]
    last = [k for k in keys if k in SEED_KEYS]
    return first + [k for k in keys if k not in first and k not in last] + last


def algo_name(run: Any) -> str:
    """What names the run's algorithm for its label and colour: the target's class when fedrun knows it
    (a preset feddyn_alpha0.1 is FedDyn), else the option's name (exact: ``fedavgm`` is not FedAvg)."""
    from fedrun.report import style as figures

    target = str(run.config.get("algo._target_", ""))
    return target if figures.algo_family(target) in figures.ALGO_STYLE else str(run.config.get("algo", target))


def figures_family(run: Any) -> str:
    from fedrun.report import style as figures

    return figures.algo_family(algo_name(run))
