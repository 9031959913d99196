"""fedrun-report's figures: a metric against rounds or communication, one curve per group of runs.

A curve is the mean over the runs (seeds) of its group, with a band of ± one sample standard
deviation (ddof=1, the convention of every fedrun table and figure); a group of one run has no band.
The colour and marker say the algorithm (:mod:`fedrun.report.style`), the linestyle the rest of the
group's setting; the title holds what all curves share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fedrun.report import style as figures
from fedrun.report.tables import higher_is_better

XAXES = {"round": "round", "comm": "communication (FedAvg rounds)"}


def metric_label(metric: str) -> str:
    if higher_is_better(metric):
        return metric.replace("_acc", " accuracy").replace("_", " ") + " (%)"
    return metric.replace("_", " ") + " (cross-entropy)"


def _short(key: str, value: Any) -> str:
    name = key.split(".", 1)[1] if "." in key else key
    return f"{figures.PARAM_SYMBOLS.get(name, name)}={value}" if "." in key else f"{key}={value}"


def curve_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``FedDyn α=0.01, partition=iid`` from the group's keys and values."""
    cfg = {k: v for k, v in zip(keys, values) if v not in ("", None)}
    algo = cfg.pop("algo", None)
    params = {k.split(".", 1)[1]: v for k, v in list(cfg.items()) if k.startswith("algo.")}
    rest = [_short(k, v) for k, v in cfg.items() if not k.startswith("algo.")]
    head = [figures.algo_label(algo, params)] if algo is not None else [_short(f"algo.{k}", v) for k, v in params.items()]
    return ", ".join(head + rest) or "all runs"


def common_title(runs: Sequence[Any], group_by: Sequence[str]) -> str:
    """The setting all runs share (the keys not grouped by)."""
    configs = [r.config for r in runs if r.config]
    if not configs:
        return ""
    keys = ("data", "partition", "num_clients", "participation")
    shared = {}
    for k in list(configs[0]):
        if (k in keys or k.startswith("partition.")) and k not in group_by and all(c.get(k) == configs[0][k] for c in configs):
            shared[k] = configs[0][k]
    if "partition" in group_by:
        shared = {k: v for k, v in shared.items() if not k.startswith("partition.")}
    return figures.setting_title(shared)


def convergence_figure(runs: Sequence[Any], table: pd.DataFrame, group_by: Sequence[str], path: Path,
                       metric: str = "test_acc", title: str = "", x: str = "round") -> int:
    """Draw ``metric`` per group against ``x`` (``round`` or ``comm``) into ``path`` (+ .pdf, .svg);
    returns the number of curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[pd.DataFrame]] = {}
    for run, (_, row) in zip(runs, table.iterrows()):
        m = run.metrics
        if m.empty or metric not in m.columns or m[metric].notna().sum() == 0:
            continue
        key = tuple("" if k not in row or pd.isna(row[k]) else row[k] for k in group_by)
        groups.setdefault(key, []).append(m.set_index("round"))
    scale = 100.0 if higher_is_better(metric) else 1.0
    def parts(key: tuple) -> tuple[str, tuple, tuple]:  # (algorithm family, its hyper-parameters, the rest of the setting)
        named = dict(zip(group_by, key))
        return (figures.algo_family(named.get("algo", "")), tuple((k, str(v)) for k, v in named.items() if k.startswith("algo.")),
                tuple((k, str(v)) for k, v in named.items() if k != "algo" and not k.startswith("algo.")))

    settings = sorted({parts(key)[2] for key in groups})
    variants = {f: sorted({parts(key)[1] for key in groups if parts(key)[0] == f}) for f, _, _ in map(parts, groups)}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ordered = sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0]))
    for i, (key, frames) in enumerate(ordered):
        values = pd.concat([f[metric].astype(float) for f in frames], axis=1) * scale
        mean = values.mean(axis=1)
        std = values.std(axis=1, ddof=1) if len(frames) > 1 else None
        if x == "comm" and all("comm_fedavg_rounds" in f for f in frames):
            xs = pd.concat([f["comm_fedavg_rounds"].astype(float) for f in frames], axis=1).mean(axis=1)
        else:
            xs = pd.Series(mean.index.astype(float), index=mean.index)
        algo = dict(zip(group_by, key)).get("algo", "")
        family, params, setting = parts(key)
        style = settings.index(setting) * max(map(len, variants.values())) + variants[family].index(params)  # a linestyle per setting and per hyper-parameter value
        label = curve_label(group_by, key) + (f" (n={len(frames)})" if len(frames) > 1 else "")
        colour = figures.algo_colour(algo) if algo != "" else None
        (line,) = ax.plot(xs.values, mean.values, label=label, color=colour, linestyle=figures.LINESTYLES[style % len(figures.LINESTYLES)],
                          marker=figures.algo_marker(algo) if algo != "" else None, markersize=4,
                          markevery=figures.markevery(i, len(ordered), len(xs)), linewidth=1.4)
        if std is not None:
            ax.fill_between(xs.values, (mean - std).values, (mean + std).values, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel(XAXES.get(x, x))
    figures.integer_rounds(ax)
    ax.set_ylabel(metric_label(metric))
    if not higher_is_better(metric):
        ax.set_yscale("log")
        figures.plain_log_ticks(ax)
    ax.grid(alpha=0.3)
    figures.legend_outside(ax, fontsize=8)
    shared = common_title(runs, group_by)
    band = "mean ± sample std (ddof=1) over seeds" if any(len(f) > 1 for f in groups.values()) else "one run per curve"
    ax.set_title("\n".join(t for t in (", ".join(t for t in (title, shared) if t), band) if t), fontsize=9)
    figures.save(fig, Path(path))
    plt.close(fig)
    return len(groups)
