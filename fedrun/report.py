"""The ``fedrun-report`` command: many run directories -> one table, markdown, figures.

``fedrun-report DIR... [--out OUT] [--targets 0.8 0.85] [--group-by algo]`` (or ``python -m
fedrun.report``) finds every run directory below the given directories (a directory with
``.hydra/config.yaml`` and/or ``summary.json``), reads its config, ``summary.json`` and
``metrics.csv`` and writes into ``--out`` (default: the first DIR):

- ``runs.csv`` / ``runs.md``: one row per run: the config keys that vary across runs, final and best
  value of ``--metric``, rounds and communication (FedAvg-round equivalents, ``comm_fedavg_rounds``) to
  reach each target, seconds, status (finished, unfinished, diverged, failed, broken);
- ``final.csv`` / ``final.md``: per setting (every varying key but the seed, rows sorted), the final
  and best value as mean ± std over the seeds; no targets needed;
- ``convergence.png`` (+ ``.pdf``, ``.svg``): the metric against rounds (or ``--x comm``), one curve
  per group (``--group-by``; by default the varying keys except the seed) with a mean ± std band;
- ``accuracy.csv`` / ``accuracy.md``: final and best accuracy (%) per setting, mean over seeds, and with
  ``--published`` a CSV without a ``target_acc`` column (e.g. ``scripts/fl_simulator_published.csv``),
  the published accuracies beside ours;
- ``targets.csv`` / ``targets.md``: the paper-style table of rounds and communication to reach each
  target, with the speed-up over FedAvg in the same setting and, with ``--published`` (a CSV with
  ``target_acc``), the published numbers beside ours.

A broken run (missing, empty or corrupt files) becomes a row with its status; it never stops the
report. Accuracies are percentages in every table and figure (``metrics.csv`` holds fractions); a
target accuracy may be given either way (0.814 or 81.4). For a loss metric (``--metric test_loss``)
best is the minimum, a target is reached at or below it, and the columns are ``final_loss``/``best_loss``.
Every std is the sample standard deviation over seeds (ddof=1).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from fedrun.report_tables import (  # noqa: F401  (the tables, also as fedrun.report.*)
    SEED_KEYS, TARGET_VALUE_COLUMNS, UNITS, _fmt, _key, _shared_keys, accuracy_table, add_published, final_markdown,
    final_table, higher_is_better, normalize_target, paper_table, target_label, target_table, to_markdown, value_columns,
)
from fedrun.specs import NOT_RESULT_KEYS
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
    """Replace each group's ``_target_`` by the option's name (``algo: feddyn``)."""
    flat = flatten(config)
    for key in [k for k in flat if k.endswith("._target_")]:
        group = key[: -len("._target_")]
        choice = choices.get(group)
        flat[group] = choice if isinstance(choice, str) else str(flat[key]).rsplit(".", 1)[-1].lower()
        del flat[key]
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


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs (a key missing in some runs counts as varying)."""
    keys: list[str] = []
    for key in sorted({k for r in runs for k in r.config}):
        if key in NOT_RESULT_KEYS or key.startswith("hydra."):
            continue
        values = {repr(r.config.get(key, "<missing>")) for r in runs if r.config}
        if len(values) > 1:
            keys.append(key)
    return keys


def _order(keys: list[str]) -> list[str]:
    """Groups first (data, partition, model, algo, engine), then the other keys, seed last."""
    first = [k for k in ("data", "partition", "model", "algo", "engine") if k in keys]
    last = [k for k in keys if k in SEED_KEYS]
    return first + [k for k in keys if k not in first and k not in last] + last


def collect(dirs: Sequence[Path], targets: Optional[Sequence[float]] = None, metric: str = "test_acc") -> tuple[pd.DataFrame, list[Run], list[str], list[float]]:
    """Read every run below ``dirs``; returns (table, runs, varying keys, targets used)."""
    runs = [load_run(p) for p in find_runs(dirs)]
    if targets is None:  # the runs' `targets` config key holds target accuracies
        targets = sorted({normalize_target(t) for r in runs for t in r.targets}) if higher_is_better(metric) else []
    targets = [normalize_target(t, metric) for t in targets]
    keys = _order(varying_keys(runs))
    rows = []
    for run in runs:
        row = {k: _cell(run.config.get(k)) for k in keys}
        row.update(run_row(run, targets, metric))
        rows.append(row)
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=keys + ["status"])
    return table, runs, keys, targets


def _cell(value: Any) -> Any:
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return value


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedrun-report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="directories holding run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="where to write runs.csv etc. (default: the first DIR)")
    p.add_argument("--targets", type=float, nargs="*", default=None, help="target accuracies, fractions or percentages (default: the runs' `targets` config)")
    p.add_argument("--group-by", nargs="*", default=None, help="keys to group curves and the target table by (default: the varying keys except seed)")
    p.add_argument("--metric", default="test_acc", help="accuracy column of metrics.csv (test_acc, test_acc_active, test_acc_all)")
    p.add_argument("--published", type=Path, default=None, help="CSV of published numbers to put beside ours: with a target_acc column in targets.csv, without one in accuracy.csv")
    p.add_argument("--facet", nargs="*", default=None, help="also one figure per value of these keys (convergence_<key>=<value>....png)")
    p.add_argument("--x", choices=["round", "comm"], default="round", help="x axis of the figures: rounds, or communication (comm_fedavg_rounds)")
    p.add_argument("--no-figures", action="store_true", help="skip convergence.png")
    return p.parse_args(argv)


def report(dirs: Sequence[Path], out: Optional[Path] = None, targets: Optional[Sequence[float]] = None,
           group_by: Optional[Sequence[str]] = None, metric: str = "test_acc", published: Optional[Path] = None,
           figures: bool = True, facet: Optional[Sequence[str]] = None, x: str = "round") -> dict[str, Any]:
    """Write runs.csv, runs.md, final.csv, final.md, targets.* (with targets), paper_table.md and
    convergence.png/.pdf/.svg; returns what was made."""
    from fedrun.report_figures import convergence_figure

    out = Path(out) if out is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    table, runs, keys, used_targets = collect(dirs, targets, metric)
    table.to_csv(out / "runs.csv", index=False)
    (out / "runs.md").write_text(to_markdown(table.drop(columns=["path"], errors="ignore")))
    made: dict[str, Any] = {"runs": len(table), "keys": keys, "targets": used_targets, "files": ["runs.csv", "runs.md"]}
    if len(table):
        final = final_table(table, keys, metric)
        final.to_csv(out / "final.csv", index=False)
        (out / "final.md").write_text(final_markdown(final, metric))
        made["final_table"] = final
        made["files"] += ["final.csv", "final.md"]
    if group_by is None:
        group_by = [k for k in keys if k not in SEED_KEYS]
    unknown = [k for k in group_by if k not in table.columns]
    if unknown:
        for k in unknown:  # a key that does not vary: one value for all runs, still groupable
            table[k] = [_cell(r.config.get(k)) for r in runs]
    pub = pd.read_csv(published) if published is not None and Path(published).is_file() else None
    if len(table) and higher_is_better(metric):  # final accuracy per setting; published accuracies (a CSV without target_acc) beside it
        acc = accuracy_table(table, keys)
        if pub is not None and "target_acc" not in pub.columns:
            acc = add_published(_shared_keys(acc, pub, runs), pub)
        acc.to_csv(out / "accuracy.csv", index=False)
        (out / "accuracy.md").write_text(to_markdown(acc))
        made["files"] += ["accuracy.csv", "accuracy.md"]
    if used_targets and len(table):
        tt = target_table(table, keys, used_targets, metric=metric)  # per setting: every varying key but the seed
        if pub is not None and "target_acc" in pub.columns:
            tt = add_published(_shared_keys(tt, pub, runs), pub)
        tt.to_csv(out / "targets.csv", index=False)
        (out / "targets.md").write_text(to_markdown(tt))
        made["files"] += ["targets.csv", "targets.md"]
        wide = paper_table(tt)
        if not wide.empty:
            (out / "paper_table.md").write_text(
                "Communication (FedAvg rounds; = rounds except SCAFFOLD, which counts 2 a round) to reach each target "
                "accuracy, mean over seeds, (speed-up over FedAvg), [published rounds, where given]\n\n" + to_markdown(wide))
            made["files"].append("paper_table.md")
        made["target_table"] = tt
    if figures:
        made["curves"] = convergence_figure(runs, table, list(group_by), out / "convergence.png", metric, x=x)
        made["files"] += ["convergence.png", "convergence.pdf", "convergence.svg"]
        for k in facet or []:
            if k not in table.columns:
                table[k] = [_cell(r.config.get(k)) for r in runs]
        if facet:
            inner = [k for k in group_by if k not in facet]
            keyed = table[list(facet)].map(_fmt).apply(tuple, axis=1)
            for values in sorted(set(keyed)):
                idx = [i for i, v in enumerate(keyed) if v == values]
                name = "convergence_" + "_".join(f"{k}={v}" for k, v in zip(facet, values)) + ".png"
                title = ", ".join(f"{k}={v}" for k, v in zip(facet, values))
                convergence_figure([runs[i] for i in idx], table.iloc[idx], inner, out / name, metric, title, x=x)
                made["files"].append(name)
    made["table"] = table
    return made


def input_problem(args: argparse.Namespace) -> Optional[str]:
    """The one sentence for inputs fedrun-report cannot use (checked before anything is read or
    written), or None: a missing or non-directory DIR, one that holds no runs, an --out that is a
    file or cannot be written, a --metric no run has, a --published file that is missing or not a CSV."""
    for d in args.dirs:
        if not d.exists():
            return f"{d} does not exist: give directories that hold run directories."
        if not d.is_dir():
            return f"{d} is a file, not a directory: give directories that hold run directories (a sweep's dir, outputs/runs)."
    found = [p for d in args.dirs for p in Path(d).rglob("*") if p.name in ("summary.json", "metrics.csv") and p.is_file()]
    if not found:
        return f"{args.dirs[0]} holds no runs (no summary.json or metrics.csv under it): give the dir a sweep or runs wrote into."
    out = Path(args.out) if args.out is not None else Path(args.dirs[0])
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file: give --out a directory for runs.csv and the figures."
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or _read_only(probe):
        return f"{out} cannot be written (a read-only or someone else's folder): give --out a directory you can write."
    columns: set[str] = set()
    for p in found:
        if p.name == "metrics.csv":
            try:
                with p.open(newline="") as f:
                    columns.update(next(csv.reader(f), []))
            except (OSError, UnicodeDecodeError, csv.Error):
                continue
    if columns and args.metric not in columns:
        usable = sorted(c for c in columns if c.startswith(("test_acc", "test_loss", "val_", "client_acc", "train_loss")))
        return f"--metric {args.metric} is not a column of the runs' metrics.csv: use one of {', '.join(usable)}."
    if args.published is not None:
        if not Path(args.published).is_file():
            return f"--published {args.published} is not a file: give the CSV of published numbers, or leave --published out."
        try:
            pd.read_csv(args.published)
        except Exception as err:  # noqa: BLE001 - any unreadable CSV gets the same advice
            return f"--published {args.published} cannot be read as CSV ({type(err).__name__}): give a CSV of published numbers."
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    problem = input_problem(args)
    if problem is not None:
        print(f"fedrun-report: error: {problem}", file=sys.stderr)
        return 2
    try:
        made = report(args.dirs, args.out, args.targets, args.group_by, args.metric, args.published, not args.no_figures, args.facet, args.x)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        where = err.filename or args.out or args.dirs[0]
        print(f"fedrun-report: error: {where} could not be written ({err.strerror or type(err).__name__}): free space or give another --out.", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    counts = made["table"]["status"].value_counts().to_dict() if made["runs"] else {}
    print(to_markdown(made["table"].drop(columns=["path", "problems"], errors="ignore")) if made["runs"] else "no runs found")
    if "final_table" in made:
        print(final_markdown(made["final_table"], args.metric))
    if "target_table" in made:
        print(to_markdown(made["target_table"]))
    print(f"{made['runs']} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}) -> {out}: {', '.join(made['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
