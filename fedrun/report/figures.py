"""fedrun-report's figures: a metric against rounds or communication, one curve per setting.

A curve is the mean over the runs (seeds) of one setting, with a band of ± one sample standard
deviation (ddof=1, the convention of every fedrun table and figure); a setting of one run has no
band. Every curve can be told apart: the algorithm picks a colour family (:mod:`fedrun.report.style`; a
yaml's ``color:`` wins), each value of its hyperparameters a shade of it, ordered by value (darker
first), and the rest of the setting (partition, participation, ...) a linestyle. ``smooth`` K draws
the K-evaluation moving average over the raw mean (drawn faintly); ``targets`` draws each target as
a dotted horizontal line. :func:`facet_figure` puts one panel per value of one or two keys in a grid,
:func:`panel_figure` the 2x2 panel of losses and accuracy that ``scripts/compare_seeds.py`` and
``scripts/compare_algorithms.py`` draw too (:func:`draw_panels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from fedrun.report import style as figures
from fedrun.report.tables import SEED_KEYS, higher_is_better

XAXES = {"round": "round", "comm": "communication (FedAvg rounds)"}


def metric_label(metric: str) -> str:
    if higher_is_better(metric):
        return metric.replace("_acc", " accuracy").replace("_", " ") + " (%)"
    return metric.replace("_", " ") + " (cross-entropy)"


@dataclass
class Curve:
    """One setting's runs and how to draw them."""

    label: str
    frames: list[pd.DataFrame] = field(default_factory=list)  # each run's metrics, indexed by round
    colour: str = "#0072B2"
    linestyle: Any = "-"
    marker: str = "."
    family: str = ""  # the algorithm (fedrun.report.style.algo_family), "" when curves are not told apart by it
    params: tuple = ()  # its hyperparameter values, in sort order
    problem: str = ""  # the rest of the setting's label: one linestyle each
    custom: Optional[str] = None  # a yaml's color:


def style(curves: list[Curve]) -> list[Curve]:
    """Colour family per algorithm, a shade per hyperparameter value (ordered), a linestyle per problem;
    an algorithm fedrun does not know gets a colour no other curve of the figure has."""
    problems = list(dict.fromkeys(c.problem for c in curves))
    known = {figures.ALGO_STYLE[c.family][1] for c in curves if c.family in figures.ALGO_STYLE}
    spare = [c for c in figures.OTHER_COLOURS if c not in known]
    base: dict[str, str] = {}
    for i, c in enumerate(curves):
        if c.family not in base:
            if c.family in figures.ALGO_STYLE:
                base[c.family] = figures.ALGO_STYLE[c.family][1]
            else:
                base[c.family] = spare.pop(0) if spare else figures.OTHER_COLOURS[i % len(figures.OTHER_COLOURS)]
    for c in curves:
        values = sorted({d.params for d in curves if d.family == c.family})
        c.colour = c.custom or figures.shade(base[c.family], values.index(c.params), len(values))
        c.linestyle = figures.LINESTYLES[problems.index(c.problem) % len(figures.LINESTYLES)]
        c.marker = figures.algo_marker(c.family) if c.family else None
    return curves


def curves_of(runs: Sequence[Any], group_by: Optional[Sequence[str]], keys: Sequence[str]) -> list[Curve]:
    """One styled curve per setting of ``group_by`` (default: the runs' varying keys but the seed), in
    the runs' order (numeric); runs without metrics are left out."""
    from fedrun.report.settings import _number, figures_family, labels_of, setting_of

    group_keys = [k for k in (group_by if group_by else keys) if k not in SEED_KEYS]
    by_algo = any(k == "algo" or k.startswith("algo.") for k in group_keys)
    found: dict[str, Curve] = {}
    for run in runs:
        m = run.metrics
        if m.empty or "round" not in m.columns:
            continue
        sid = repr(sorted(setting_of(run, group_keys).items()))
        if sid not in found:
            method, setting = labels_of(run, group_keys)
            label = ", ".join(t for t in ((method if by_algo else ""), setting) if t) or "all runs"
            found[sid] = Curve(label, family=figures_family(run) if by_algo else "", problem=setting,
                               params=tuple(_number(run.config.get(k)) for k in group_keys if k.startswith("algo.")),
                               custom=run.config.get("algo.color") if by_algo else None)
        found[sid].frames.append(m.set_index("round"))
    return style(list(found.values()))


def draw(ax: Any, curve: Curve, column: str, scale: float = 1.0, smooth: int = 1, x: str = "round", index: int = 0,
         count: int = 1, label: bool = True) -> bool:
    """``column`` of ``curve`` on ``ax``: mean over its runs, ± sample std band, the moving average over
    the faint raw mean when ``smooth`` > 1; False when no run has the column."""
    frames = [f for f in curve.frames if column in f and f[column].notna().any()]
    if not frames:
        return False
    raw = pd.concat([scale * f[column].astype(float) for f in frames], axis=1)
    values = raw.rolling(smooth, min_periods=1).mean() if smooth > 1 else raw
    mean = values.mean(axis=1)
    if x == "comm" and all("comm_fedavg_rounds" in f for f in frames):
        xs = pd.concat([f["comm_fedavg_rounds"].astype(float) for f in frames], axis=1).mean(axis=1).values
    else:
        xs = mean.index.astype(float).values
    if smooth > 1:
        figures.faint(ax, xs, raw.mean(axis=1).values, color=curve.colour, linestyle=curve.linestyle)
    name = curve.label + (f" (n={len(frames)})" if len(frames) > 1 else "")
    ax.plot(xs, mean.values, label=name if label else None, color=curve.colour, linestyle=curve.linestyle,
            marker=curve.marker, markersize=3.5, markevery=figures.markevery(index, count, len(xs)), linewidth=1.4)
    if len(frames) > 1:
        std = values.std(axis=1, ddof=1)
        ax.fill_between(xs, (mean - std).values, (mean + std).values, color=curve.colour, alpha=0.15, linewidth=0)
    return True


def _axes(ax: Any, metric: str, x: str, targets: Sequence[float]) -> None:
    ax.set_xlabel(XAXES.get(x, x))
    figures.integer_rounds(ax)
    ax.set_ylabel(metric_label(metric))
    if not higher_is_better(metric):
        ax.set_yscale("log")
        figures.plain_log_ticks(ax)
    for t in targets:  # accuracy targets (fractions) as dotted lines, labelled inside at the left end
        ax.axhline(100 * t, color="0.45", linestyle=(0, (1, 2)), linewidth=0.9)
        ax.annotate(f"target {100 * t:g}%", xy=(0.0, 100 * t), xycoords=("axes fraction", "data"), xytext=(3, 2),
                    textcoords="offset points", fontsize=7, color="0.35", va="bottom")
    ax.grid(alpha=0.3)


def _band(curves: Sequence[Curve]) -> str:
    return "mean ± sample std (ddof=1) over seeds" if any(len(c.frames) > 1 for c in curves) else "one run per curve"


def convergence_figure(runs: Sequence[Any], table: pd.DataFrame, group_by: Optional[Sequence[str]], path: Path,
                       metric: str = "test_acc", title: str = "", x: str = "round", keys: Sequence[str] = (),
                       smooth: int = 1, targets: Sequence[float] = ()) -> int:
    """Draw ``metric`` per setting against ``x`` into ``path`` (+ .pdf, .svg); returns the number of curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if higher_is_better(metric) else 1.0
    curves = curves_of(runs, group_by, keys or [k for k in table.columns if k in (group_by or [])])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = sum(draw(ax, c, metric, scale, smooth, x, i, len(curves)) for i, c in enumerate(curves))
    _axes(ax, metric, x, targets)
    figures.legend_outside(ax, fontsize=8)
    note = _band(curves) + (f"; {smooth}-evaluation moving average over the raw mean (faint)" if smooth > 1 else "")
    ax.set_title("\n".join(t for t in (title, note) if t), fontsize=9)
    figures.save(fig, Path(path))
    plt.close(fig)
    return int(drawn)


def facet_figure(runs: Sequence[Any], table: pd.DataFrame, facet: Sequence[str], group_by: Optional[Sequence[str]], path: Path,
                 metric: str = "test_acc", title: str = "", x: str = "round", keys: Sequence[str] = (), smooth: int = 1,
                 targets: Sequence[float] = ()) -> tuple[int, int]:
    """A grid of panels: rows by the values of ``facet[0]``, columns by ``facet[1]`` (numeric order), each
    with the curves of its runs; a curve has the same style in every panel. Returns (rows, columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedrun.report.settings import _number

    inner = [k for k in (group_by if group_by else keys) if k not in facet]
    styles = {c.label: c for c in curves_of(runs, inner, inner)}
    value = lambda run, k: run.config.get(k)  # noqa: E731
    axes_values = [sorted({repr(value(r, k)) for r in runs if r.config}, key=lambda v: _number(eval_value(v))) for k in facet[:2]]
    rows, cols = axes_values[0], axes_values[1] if len(facet) > 1 else ["None"]
    scale = 100.0 if higher_is_better(metric) else 1.0
    fig, grid = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.0 * len(rows)), sharex=True, sharey=True, squeeze=False)
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = grid[i][j]
            part = [r for r in runs if r.config and repr(value(r, facet[0])) == rv and (len(facet) < 2 or repr(value(r, facet[1])) == cv)]
            for n, c in enumerate(curves_of(part, inner, inner)):
                s = styles.get(c.label, c)
                c.colour, c.linestyle, c.marker = s.colour, s.linestyle, s.marker
                draw(ax, c, metric, scale, smooth, x, n, len(styles), label=False)
            _axes(ax, metric, x, targets)
            ax.set_title(", ".join(facet_label(part, k, eval_value(v)) for k, v in zip(facet, (rv, cv))), fontsize=9)
            if i < len(rows) - 1:
                ax.set_xlabel("")
            if j:
                ax.set_ylabel("")
    handles = [plt.Line2D([], [], color=c.colour, linestyle=c.linestyle, marker=c.marker, label=c.label) for c in styles.values()]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)) or 1, frameon=False, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("\n".join(t for t in (title, _band(list(styles.values()))) if t), fontsize=9)
    fig.tight_layout(rect=(0, 0.04 * (1 + (len(handles) - 1) // 4), 1, 1))
    figures.save(fig, Path(path))
    plt.close(fig)
    return len(rows), len(cols)


def facet_label(runs: Sequence[Any], key: str, value: Any) -> str:
    """A panel's title part: a group by its display label (``FedDyn``, ``Dir(0.3)``), a key as ``p=0.1``."""
    from fedrun.report.settings import labels_of

    if runs and f"{key}._target_" in runs[0].config:
        method, setting = labels_of(runs[0], [key])
        return method if key == "algo" else setting
    return figures.key_label(key, value)


def eval_value(text: str) -> Any:
    """The value back from its repr (for numeric order and titles)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# The 2x2 panel: (column, title, log scale, scale, smoothed).
PANELS = [
    ("test_loss", "server model: loss", True, 1.0, False),
    ("test_acc", "server model: accuracy (%)", False, 100.0, False),
    ("test_loss_all", "mean of all clients' models: loss", True, 1.0, False),
    ("train_loss", "local training loss", True, 1.0, True),
]


def draw_panels(curves: Sequence[Curve], path: Path, title: str, smooth: int = 10, dpi: int = 110) -> Path:
    """The 2x2 panel of server loss, server accuracy, all-clients loss and the (smoothed) local train loss,
    one legend below; PNG, PDF and SVG. The report's ``--panels`` and both compare scripts draw this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.6), sharex=True)
    for ax, (col, name, log, scale, smoothed) in zip(axes.flat, PANELS):
        for i, c in enumerate(curves):
            draw(ax, c, col, scale, smooth if smoothed else 1, "round", i, len(curves), label=ax is axes[0, 0])
        ax.set_title(name + (f" ({smooth}-round mean)" if smoothed and smooth > 1 else ""), fontsize=10)
        if log:
            ax.set_yscale("log")
            figures.plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        figures.integer_rounds(ax)
    for ax in axes[1]:
        ax.set_xlabel("round")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = len(labels) if len(labels) <= 5 else (len(labels) + 1) // 2
    fig.legend(handles, labels, loc="lower center", ncol=max(ncol, 1), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.035 * (1 if len(labels) <= 5 else 2), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.save(fig, path, dpi=dpi)
    plt.close(fig)
    return path


def panel_figure(runs: Sequence[Any], table: pd.DataFrame, group_by: Optional[Sequence[str]], path: Path,
                 keys: Sequence[str] = (), title: str = "", smooth: int = 10) -> Path:
    """The report's ``--panels``: :func:`draw_panels` of every setting's curves."""
    curves = curves_of(runs, group_by, keys)
    return draw_panels(curves, path, "\n".join(t for t in (title, _band(curves)) if t), smooth)


def algo_curves(frames: dict[str, list[pd.DataFrame]], params: Optional[dict[str, dict]] = None) -> list[Curve]:
    """Curves of the compare scripts: one per algorithm (an option name), its runs' metrics frames."""
    params = params or {}
    out = [Curve(figures.algo_label(algo, params.get(algo)), [f.set_index("round") if "round" in f.columns else f for f in dfs],
                 family=figures.algo_family(algo)) for algo, dfs in frames.items()]
    return style(out)
