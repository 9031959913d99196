"""The ``fedrun-report`` command: many run directories -> one table, markdown, figures.

``fedrun-report DIR... [--out OUT] [--targets 0.8 0.85] [--group-by algo]`` (or ``python -m
fedrun.report.cli``) finds every run directory below the given directories (a directory with
``.hydra/config.yaml`` and/or ``summary.json``), reads its config, ``summary.json`` and
``metrics.csv`` and writes into ``--out`` (default: the first DIR):

A run's setting is its resolved config minus the seed and the keys that change no result
(:data:`~fedrun.config.schema.NOT_RESULT_KEYS`), a group by its option's target and values, and a key the
run's option lacks absent (:func:`varying_keys`): two sweeps merged give one row per setting, a
preset and the same values given on the command line are one setting. Rows carry display labels
(``method``: ``FedDyn α=0.03``; ``setting``: ``Dir(0.3), p=0.1``; an option's ``label:`` first) and
come in numeric order; what every run shares is the tables' caption line.

- ``runs.csv`` / ``runs.md``: one row per run: the keys that tell settings apart, final and best
  value of ``--metric``, rounds and communication (FedAvg-round equivalents, ``comm_fedavg_rounds``) to
  reach each target, seconds, status (finished, unfinished, diverged, failed, broken), the labels;
- ``final.csv`` / ``final.md`` / ``final.tex``: per setting, the final and best value as
  ``mean ± std`` over the seeds (and the final per-client and validation accuracy when the runs have
  them); no targets needed;
- ``convergence.png`` (+ ``.pdf``, ``.svg``): the metric against rounds (or ``--x comm``), one curve
  per setting (or per ``--group-by`` group) with a mean ± std band (:mod:`fedrun.report.figures`:
  ``--smooth``, target lines; ``--facet`` adds ``facets.*``, ``--panels`` ``panels.*``);
- ``accuracy.csv`` / ``accuracy.md``: final and best accuracy (%) per setting, mean over seeds, and with
  ``--published`` a CSV without a ``target_acc`` column (e.g. ``scripts/fl_simulator_published.csv``),
  the published accuracies beside ours;
- ``targets.csv`` / ``targets.md`` and ``paper_table.md`` / ``.csv`` / ``.tex``: rounds to each target
  over the seeds that reached it (k/n), the speed-up over FedAvg in the same setting, communication
  and, with ``--published`` (a CSV with ``target_acc``), the published numbers beside ours; the
  paper table has a row per setting and target and a column per method.

A broken run (missing, empty or corrupt files) becomes a row with its status; it never stops the
report. Accuracies are percentages in every table and figure (``metrics.csv`` holds fractions); a
target accuracy may be given either way (0.814 or 81.4). For a loss metric (``--metric test_loss``)
best is the minimum, a target is reached at or below it, and the columns are ``final_loss``/``best_loss``.
Every std is the sample standard deviation over seeds (ddof=1).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from fedrun.report.runs import Run, _cell, collect
from fedrun.report.settings import setting_of
from fedrun.report.tables import (
    HIDDEN, _shared_keys, accuracy_table, add_published, constant_caption, final_display, final_markdown,
    final_table, higher_is_better, paper_table, target_table, to_latex, to_markdown, write_table,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedrun-report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="directories holding run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="where to write runs.csv etc. (default: the first DIR)")
    p.add_argument("--targets", type=float, nargs="*", default=None, help="target accuracies, fractions or percentages (default: the runs' `targets` config)")
    p.add_argument("--group-by", nargs="*", default=None, help="keys to group curves and the target table by (default: the varying keys except seed)")
    p.add_argument("--metric", default="test_acc", help="accuracy column of metrics.csv (test_acc, test_acc_active, test_acc_all)")
    p.add_argument("--published", type=Path, default=None, help="CSV of published numbers to put beside ours: with a target_acc column in targets.csv, without one in accuracy.csv")
    p.add_argument("--facet", nargs="*", default=None, help="also facets.png: a grid of panels, rows by the first key's values, columns by the second's (e.g. --facet partition participation)")
    p.add_argument("--smooth", type=int, default=1, help="moving average over this many evaluations, drawn over the raw curve (drawn faintly)")
    p.add_argument("--panels", action="store_true", help="also panels.png: the 2x2 panel of server loss, accuracy, all-clients loss and local train loss")
    p.add_argument("--x", choices=["round", "comm"], default="round", help="x axis of the figures: rounds, or communication (comm_fedavg_rounds)")
    p.add_argument("--no-figures", action="store_true", help="skip convergence.png")
    return p.parse_args(argv)


def caption_of(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """What every run shares, for a table's caption line: ``synthetic, Dir(0.3), m=100, p=0.1, 50 rounds; 3 seeds``."""
    from fedrun.report import style as figures

    configs = [r.config for r in runs if r.config]
    if not configs:
        return ""
    shared = {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs)}
    parts = []
    if "data" not in keys and "data" in shared:
        parts.append(str(shared["data"]))
    if "partition" not in keys and not any(k.startswith("partition.") for k in keys) and "partition" in shared:
        own = {k.split(".", 1)[1]: v for k, v in shared.items() if k.startswith("partition.") and k.count(".") == 1
               and not k.endswith(("._target_", ".label", ".color"))}
        parts.append(figures.partition_label(shared.get("partition._target_", shared["partition"]), own))
    if "model" not in keys and "model" in shared:
        parts.append(str(shared["model"]))
    parts += [figures.key_label(k, shared[k]) for k in ("num_clients", "participation") if k in shared and k not in keys]
    if "rounds" in shared and "rounds" not in keys:
        parts.append(f"{shared['rounds']} rounds")
    seeds = {}
    for r in runs:
        if r.config:
            seeds.setdefault(repr(setting_of(r, keys)), set()).add(r.config.get("seed"))
    counts = sorted({len(v) for v in seeds.values()})
    text = ", ".join(parts)
    if counts:
        text += ("; " if text else "") + (f"{counts[0]} seed{'s' if counts[0] > 1 else ''} per row" if len(counts) == 1
                                          else f"{counts[0]}-{counts[-1]} seeds per row")
    return text


def report(dirs: Sequence[Path], out: Optional[Path] = None, targets: Optional[Sequence[float]] = None,
           group_by: Optional[Sequence[str]] = None, metric: str = "test_acc", published: Optional[Path] = None,
           figures: bool = True, facet: Optional[Sequence[str]] = None, x: str = "round", smooth: int = 1,
           panels: bool = False) -> dict[str, Any]:
    """Write runs.csv/.md, final.csv/.md/.tex, accuracy.*, targets.* and paper_table.md/.csv/.tex (with
    targets), convergence.png/.pdf/.svg (and facets.*, panels.* when asked); returns what was made."""
    from fedrun.report.figures import convergence_figure, facet_figure, panel_figure

    out = Path(out) if out is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    table, runs, keys, used_targets = collect(dirs, targets, metric)
    caption = caption_of(runs, keys)
    table.drop(columns=list(HIDDEN), errors="ignore").to_csv(out / "runs.csv", index=False)
    (out / "runs.md").write_text(to_markdown(table.drop(columns=["path", *HIDDEN], errors="ignore")))
    made: dict[str, Any] = {"runs": len(table), "keys": keys, "targets": used_targets, "files": ["runs.csv", "runs.md"],
                            "caption": caption}
    if len(table):
        final = final_table(table, keys, metric)
        final.drop(columns=list(HIDDEN), errors="ignore").to_csv(out / "final.csv", index=False)
        (out / "final.md").write_text(final_markdown(final, metric, caption))
        if not final.empty:
            shown, constant = constant_caption(final_display(final, metric), keep=("method",))
            (out / "final.tex").write_text(to_latex(shown, "; ".join(t for t in (caption, constant) if t)))
            made["files"].append("final.tex")
        made["final_table"] = final
        made["files"] += ["final.csv", "final.md"]
    for k in list(group_by or []) + list(facet or []):
        if k not in table.columns:  # a key that does not vary: one value for all runs, still groupable
            table[k] = [_cell(r.config.get(k)) for r in runs]
    pub = pd.read_csv(published) if published is not None and Path(published).is_file() else None
    if len(table) and higher_is_better(metric):  # final accuracy per setting; published accuracies (a CSV without target_acc) beside it
        acc = accuracy_table(table, keys)
        if pub is not None and "target_acc" not in pub.columns:
            acc = add_published(_shared_keys(acc, pub, runs), pub)
        acc = acc.drop(columns=list(HIDDEN), errors="ignore")
        acc.to_csv(out / "accuracy.csv", index=False)
        (out / "accuracy.md").write_text(to_markdown(acc))
        made["files"] += ["accuracy.csv", "accuracy.md"]
    if used_targets and len(table):
        tt = target_table(table, keys, used_targets, metric=metric)  # per setting: its config but the seed
        if pub is not None and "target_acc" in pub.columns:
            tt = add_published(_shared_keys(tt, pub, runs), pub)
        tt.drop(columns=list(HIDDEN), errors="ignore").to_csv(out / "targets.csv", index=False)
        (out / "targets.md").write_text(to_markdown(tt.drop(columns=list(HIDDEN), errors="ignore")))
        made["files"] += ["targets.csv", "targets.md"]
        wide = paper_table(tt)
        if not wide.empty:
            title = ("Rounds to reach each target accuracy: mean ± sample std over the seeds that reached it (k/n seeds when "
                     "some did not), (speed-up over FedAvg: its rounds / the method's), [communication in FedAvg rounds where "
                     "it differs: a SCAFFOLD round counts 2], [published numbers, where given].")
            made["files"] += write_table(wide, out / "paper_table", caption, title)
        made["target_table"] = tt
        made["paper_table"] = wide
    if figures and len(table):
        kw = dict(metric=metric, x=x, smooth=smooth, targets=used_targets if higher_is_better(metric) else [])
        made["curves"] = convergence_figure(runs, table, group_by, out / "convergence.png", keys=keys, title=caption, **kw)
        made["files"] += ["convergence.png", "convergence.pdf", "convergence.svg"]
        if facet:
            facet_figure(runs, table, list(facet), group_by, out / "facets.png", keys=keys, title=caption, **kw)
            made["files"] += ["facets.png", "facets.pdf", "facets.svg"]
        if panels:
            panel_figure(runs, table, group_by, out / "panels.png", keys=keys, title=caption, smooth=max(smooth, 1))
            made["files"] += ["panels.png", "panels.pdf", "panels.svg"]
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
        made = report(args.dirs, args.out, args.targets, args.group_by, args.metric, args.published, not args.no_figures, args.facet, args.x,
                      args.smooth, args.panels)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        where = err.filename or args.out or args.dirs[0]
        print(f"fedrun-report: error: {where} could not be written ({err.strerror or type(err).__name__}): free space or give another --out.", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    counts = made["table"]["status"].value_counts().to_dict() if made["runs"] else {}
    print(to_markdown(made["table"].drop(columns=["path", "problems", *HIDDEN], errors="ignore")) if made["runs"] else "no runs found")
    if "final_table" in made:
        print(final_markdown(made["final_table"], args.metric, made["caption"]))
    if made.get("paper_table") is not None and not made["paper_table"].empty:
        print(to_markdown(made["paper_table"]))
    print(f"{made['runs']} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}) -> {out}: {', '.join(made['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
