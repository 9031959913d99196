"""Convergence plot of one run: test accuracy and loss against rounds (PNG, PDF and SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedrun.report import style as figures  # noqa: E402

MODELS = [("", "server model", "-"), ("_active", "mean of active clients' models", "--"), ("_all", "mean of all clients' models", ":")]


def convergence_plot(rows: list[dict[str, Any]], path: Path, title: str, algo: str = "") -> list[Path]:
    """Accuracy (left) and loss (right) of ``rows`` (metrics rows) into ``path`` and its .pdf/.svg.

    The algorithm's colour is that of every fedrun figure; the server model is the solid line, the
    means of the clients' models dashed and dotted. The train loss (noisy: few clients per round)
    is drawn faint with a trailing rolling mean over it.
    """
    df = pd.DataFrame(rows)
    colour = figures.algo_colour(algo) if algo else "#0072B2"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for suffix, label, style in MODELS:
        col = "test_acc" + suffix
        if col in df and df[col].notna().any():
            ax_acc.plot(df["round"], 100 * df[col], label=label, color=colour, linestyle=style, linewidth=1.4)
    ax_acc.set_ylabel("test accuracy (%)")
    window = max(1, len(df) // 25)
    ax_loss.plot(df["round"], df["train_loss"], color="#7F7F7F", alpha=0.3, linewidth=0.8)
    ax_loss.plot(df["round"], df["train_loss"].rolling(window, min_periods=1).mean(), color="#7F7F7F",
                 label="train loss (local)" + (f", {window}-row mean" if window > 1 else ""))
    for suffix, label, style in MODELS[:1]:
        ax_loss.plot(df["round"], df["test_loss" + suffix], color=colour, linestyle=style, label=f"test loss ({label})")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("round")
        figures.integer_rounds(ax)
        ax.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss):  # below the axes: never over a curve
        ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.suptitle(title, fontsize=10)
    out = figures.save(fig, Path(path))
    plt.close(fig)
    return out

