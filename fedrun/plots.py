"""Convergence plot of one run: test accuracy and test loss against rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def convergence_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    series = [("test_acc", "server model"), ("test_acc_active", "mean of active"), ("test_acc_all", "mean of all")]
    for key, label in series:
        if rows and rows[0].get(key) is not None:
            ax_acc.plot(rounds, [100 * r[key] for r in rows], label=label)
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    train = [r["train_loss"] for r in rows]
    window = max(1, len(rows) // 25)  # few active clients per round make the local loss noisy
    ax_loss.plot(rounds, train, color="tab:orange", alpha=0.25, linewidth=0.8)
    ax_loss.plot(rounds, _moving_average(train, window), color="tab:orange",
                 label="train loss (local, mean)" + (f", {window}-row average" if window > 1 else ""))
    ax_loss.plot(rounds, [r["test_loss"] for r in rows], color="tab:blue", label="test loss (server model)", zorder=3)
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
