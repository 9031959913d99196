"""Reading run directories back: each run's config, summary and metrics, its setting and its labels.

A run's setting is its resolved config minus the seed and the keys that change no result
(:data:`~fedrun.config.schema.NOT_RESULT_KEYS`), a group by its option's target and values, and a
key the run's option lacks absent (:func:`varying_keys`): two sweeps merged give one row per
setting, a preset and the same values given on the command line are one setting. :func:`labels_of`
gives each run its display labels (``FedDyn α=0.03``; ``Dir(0.3), p=0.1``; an option's ``label:``
first) and :func:`sort_key` its numeric order. The command and its outputs: :mod:`fedrun.report.cli`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from fedrun.rundir.resume import ADDED_KEYS, MOVED_TARGETS
from fedrun.report.settings import _order, figures_family, labels_of, setting_of, sort_key, varying_keys
from fedrun.report.tables import EXTRA_METRICS, higher_is_better, normalize_target, target_label, value_columns
STATUSES = ("finished", "unfinished", "diverged", "failed", "broken")


@dataclass
class Run:
    """One run directory as read from disk."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    status: str = "unfinished"
    problems: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Finding and reading runs


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(dirs: Iterable[Path]) -> list[Path]:
    """Every run directory at or below ``dirs``, sorted, without duplicates."""
    found: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            continue
        candidates = [d] + [p.parent for p in d.rglob("summary.json")] + [p.parent.parent for p in d.rglob(".hydra/config.yaml")]
        found.update(p.resolve() for p in candidates if p.is_dir() and is_run_dir(p))
    return sorted(found)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"alpha": 0.1}}`` -> ``{"algo.alpha": 0.1}``; lists become tuples."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flatten(value, name))
            else:
                out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _group_names(config: dict[str, Any], choices: dict[str, Any]) -> dict[str, Any]:
    """The flat config with each group's option name beside its ``_target_`` (``algo: feddyn``,
    ``algo._target_: fedrun.algorithms.feddyn.FedDyn``): the target says what ran, the name is for people."""
    flat = flatten(config)
    for key in [k for k in flat if k.endswith("._target_")]:  # a target under its module path before the house move: today's
        for old, new in MOVED_TARGETS.items():
            if isinstance(flat[key], str) and flat[key].startswith(old):
                flat[key] = new + flat[key][len(old):]
    if flat:
        for key, value in ADDED_KEYS.items():  # a key added after the run was written: the value it ran with
            flat.setdefault(key, value)
    for key in [k for k in flat if k.endswith("._target_") and k.count(".") == 1]:
        group = key[: -len("._target_")]
        choice = choices.get(group)
        flat[group] = choice if isinstance(choice, str) else str(flat[key]).rsplit(".", 1)[-1].lower()
    return flat


def _read_yaml(path: Path, run: Run) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        run.problems.append(f"{path.name} unreadable ({type(err).__name__})")
        return None
    return content if isinstance(content, dict) else None


def load_run(path: Path) -> Run:
    """Read one run directory; never raises on a broken run (the status says what is wrong)."""
    run = Run(Path(path))
    summary_path = run.path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not an object")
            run.summary = summary
        except (OSError, ValueError, UnicodeDecodeError) as err:
            run.problems.append(f"summary.json unreadable ({type(err).__name__})")
    hydra_cfg = _read_yaml(run.path / ".hydra" / "config.yaml", run)
    hydra_meta = _read_yaml(run.path / ".hydra" / "hydra.yaml", run) or {}
    choices = ((hydra_meta.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    config = run.summary.get("config") if isinstance(run.summary.get("config"), dict) else hydra_cfg
    run.config = _group_names(config or {}, choices)
    targets = (config or {}).get("targets") or []
    run.targets = [float(t) for t in targets if isinstance(t, (int, float))] if isinstance(targets, list) else []
    metrics_path = run.path / "metrics.csv"
    if metrics_path.is_file():
        try:
            df = pd.read_csv(metrics_path)
            if "round" not in df.columns:
                raise ValueError("no round column")
            df = df.apply(pd.to_numeric, errors="coerce").dropna(subset=["round"])
            run.metrics = df.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            run.problems.append(f"metrics.csv unreadable ({type(err).__name__})")
    run.status = _status(run)
    return run


def _status(run: Run) -> str:
    status = run.summary.get("status")
    if any(p.startswith("summary.json") for p in run.problems) or (not run.config and not run.summary):
        return "broken"
    if status in ("finished", "diverged", "failed"):
        return str(status)
    if status in (None, "running", "interrupted"):  # interrupted: stopped by a signal, resumable
        return "unfinished"
    return "failed"


# ---------------------------------------------------------------------------------------------
# Per-run numbers


def rounds_to_target(metrics: pd.DataFrame, target: float, metric: str = "test_acc") -> float:
    """The first evaluated round whose ``metric`` is at or above ``target`` (at or below, for a loss); NaN if never reached."""
    if metrics.empty or metric not in metrics.columns or "round" not in metrics.columns:
        return math.nan
    target = normalize_target(target, metric)
    reached = metrics[metric] >= target - 1e-12 if higher_is_better(metric) else metrics[metric] <= target + 1e-12
    hit = metrics.loc[reached, "round"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def comm_to_target(metrics: pd.DataFrame, target: float, metric: str = "test_acc") -> float:
    """Communication spent (``comm_fedavg_rounds``, FedAvg-round equivalents) when the target is first reached."""
    r = rounds_to_target(metrics, target, metric)
    if math.isnan(r):
        return math.nan
    if "comm_fedavg_rounds" not in metrics.columns:
        return r
    return float(metrics.loc[metrics["round"] == r, "comm_fedavg_rounds"].iloc[0])


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def run_row(run: Run, targets: Sequence[float], metric: str) -> dict[str, Any]:
    m = run.metrics
    has = not m.empty and metric in m.columns and m[metric].notna().any()
    final_col, best_col = value_columns(metric)
    scale = 100.0 if higher_is_better(metric) else 1.0
    if has:
        final, best = float(m[metric].dropna().iloc[-1]), float(m[metric].max() if higher_is_better(metric) else m[metric].min())
    elif metric == "test_acc":
        final, best = _num(run.summary.get("final_test_acc")), _num(run.summary.get("best_test_acc"))
    else:
        final = best = _num(run.summary.get(f"final_{metric}"))  # summary.json has no best loss
    row: dict[str, Any] = {
        "status": run.status,
        "rounds_done": int(m["round"].max()) if not m.empty else int(np.nan_to_num(_num(run.summary.get("rounds_done")))),
        final_col: scale * final,
        best_col: scale * best,
    }
    for extra in EXTRA_METRICS:  # per-client and validation accuracy (percent), when the run has them
        if not m.empty and extra in m.columns and m[extra].notna().any():
            row[f"final_{extra}"] = 100.0 * float(m[extra].dropna().iloc[-1])
    for t in targets:
        row[f"rounds_to_{target_label(t, metric)}"] = rounds_to_target(m, t, metric)
        row[f"comm_to_{target_label(t, metric)}"] = comm_to_target(m, t, metric)
    seconds = _num(run.summary.get("seconds"))
    if math.isnan(seconds) and not m.empty and "wall_s" in m.columns:
        seconds = _num(m["wall_s"].iloc[-1])
    row["seconds"] = seconds
    row["problems"] = "; ".join(run.problems)
    row["path"] = str(run.path)
    return row


def collect(dirs: Sequence[Path], targets: Optional[Sequence[float]] = None, metric: str = "test_acc") -> tuple[pd.DataFrame, list[Run], list[str], list[float]]:
    """Read every run below ``dirs``; returns (table, runs, varying keys, targets used)."""
    runs = [load_run(p) for p in find_runs(dirs)]
    if targets is None:  # the runs' `targets` config key holds target accuracies
        targets = sorted({normalize_target(t) for r in runs for t in r.targets}) if higher_is_better(metric) else []
    targets = [normalize_target(t, metric) for t in targets]
    keys = _order(varying_keys(runs))
    runs = sorted(runs, key=lambda r: (not r.config, sort_key(r, keys), str(r.path)))  # numeric order, broken runs last
    rows = []
    for run in runs:
        row = {k: _cell(run.config.get(k)) for k in keys}
        row.update(run_row(run, targets, metric))
        setting = setting_of(run, keys)
        row["method"], row["setting"] = labels_of(run, keys) if run.config else ("", "")
        row["_setting"] = repr(sorted(setting.items())) if run.config else repr(run.path)  # a broken run is a setting of its own
        row["_problem"] = repr(sorted((k, v) for k, v in setting.items() if k != "algo" and not k.startswith("algo.")))
        row["_fedavg"] = figures_family(run) == "fedavg"
        rows.append(row)
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=keys + ["status"])
    return table, runs, keys, targets


def _cell(value: Any) -> Any:
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return value
