"""Convergence plot of one run: accuracy and loss against rounds (PNG, PDF and SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedrun.report import style as figures  # noqa: E402

# (column suffix, label, linestyle, marker): the server model and the two means of the clients' models.
MODELS = [("", "server model", "-", None), ("_active", "mean of active clients' models", "--", "o"),
          ("_all", "mean of all clients' models", (0, (1, 1.5)), "s")]
# Colours of the clients' means, per-client and validation accuracy: distinct from each other; the server
# model has the algorithm's colour, and a colour equal to it is skipped.
SECOND_COLOURS = ["#0072B2", "#009E73", "#CC79A7", "#000000", "#E69F00", "#56B4E9", "#D55E00"]  # far from each other first: blue, green, pink
# Accuracies a run has when it holds out per-client test data or a validation split (fedrun/client_eval.py).
EXTRA = [("client_acc_mean", "per-client accuracy, mean", "-."), ("client_acc_worst10", "per-client accuracy, worst 10%", "-."),
         ("val_acc", "validation accuracy (server model)", (0, (5, 1)))]


def smoothing_window(rows: int) -> int:
    """The train loss's moving-average window: about 1/10 of the evaluations (1 for runs under 20)."""
    return max(1, rows // 10)


def convergence_plot(rows: list[dict[str, Any]], path: Path, title: str, algo: str = "") -> list[Path]:
    """Accuracy (left) and loss (right) of ``rows`` (metrics rows) into ``path`` and its .pdf/.svg.

    The server model has the algorithm's colour (that of every fedrun figure); the means of the
    active and of all clients' models each their own colour, linestyle and markers (so one is seen
    where it lies on another); per-client and validation accuracy too when the run has them. The
    train loss (noisy: few clients per round) is its moving average, over the raw values drawn
    faintly and left out of the y range.
    """
    df = pd.DataFrame(rows)
    colour = figures.algo_colour(algo) if algo else "#0072B2"
    others = iter([c for c in SECOND_COLOURS if c.lower() != colour.lower()])
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    n = len(df)
    for i, (suffix, label, style, marker) in enumerate(MODELS):
        col = "test_acc" + suffix
        if col in df and df[col].notna().any():
            c = colour if not suffix else next(others)
            ax_acc.plot(df["round"], 100 * df[col], label=label, color=c, linestyle=style, linewidth=2.2 if not suffix else 1.3,
                        marker=marker, markersize=3, markevery=figures.markevery(i, len(MODELS), n), zorder=2 if not suffix else 3)
    for col, label, style in EXTRA:
        if col in df and df[col].notna().any():
            ax_acc.plot(df["round"], 100 * df[col], label=label, color=next(others), linestyle=style, linewidth=1.2)
    ax_acc.set_ylabel("accuracy (%)")
    window = smoothing_window(n)
    if "train_loss" in df:
        if window > 1:
            figures.faint(ax_loss, df["round"].values, df["train_loss"].values, color="#7F7F7F")
        ax_loss.plot(df["round"], df["train_loss"].rolling(window, min_periods=1).mean(), color="#7F7F7F",
                     label="train loss (local)" + (f", {window}-evaluation moving average" if window > 1 else ""))
    ax_loss.plot(df["round"], df["test_loss"], color=colour, linestyle="-", label="test loss (server model)")
    if "val_loss" in df and df["val_loss"].notna().any():
        ax_loss.plot(df["round"], df["val_loss"], color=colour, linestyle=(0, (5, 1)), label="validation loss (server model)")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("round")
        figures.integer_rounds(ax)
        ax.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss):  # below the axes: never over a curve
        ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    fig.suptitle(title, fontsize=10)
    out = figures.save(fig, Path(path))
    plt.close(fig)
    return out
