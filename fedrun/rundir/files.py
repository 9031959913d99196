"""What a run writes into its run directory: ``metrics.csv``, ``summary.json``.

``metrics.csv`` gets one row per evaluated round, appended and flushed as soon as it exists, so a
killed run keeps every round it finished. ``summary.json`` is written atomically (temporary file,
then rename).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from fedrun.errors import writing


class MetricsWriter:
    """Appends rows to a CSV file, writing the header with the first row."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        # a full disk may leave a cut row: a resumed run rewrites the file from its checkpoint's rows
        with writing(self.path, 4096), self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="raise")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Make the file hold exactly ``rows`` (a resumed run: the checkpoint's rows, whatever a crash or
        a full disk left in the file after them or in them): a temporary file, fsynced, renamed over it.
        No rows: no file (a fresh run writes the header with its first row)."""
        from fedrun.state.journal import fsync_dir

        self.rows = list(rows)
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with writing(self.path, 512 * (len(self.rows) + 1)), tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in self.rows:
                    writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
                f.flush()
                os.fsync(f.fileno())
            with writing(self.path):
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path.parent)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by null (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write valid JSON (non-finite numbers as null) to a temporary file and rename it over ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False) + "\n"
    try:
        with writing(path, len(text)):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize(rows: list[dict[str, Any]], status: str, seconds: float, num_params: int, config: dict) -> dict[str, Any]:
    """The content of ``summary.json`` from the metrics rows written so far (a plain dict: a caller
    adds its own fields before writing it)."""
    accs = [(r["test_acc"], r["round"]) for r in rows if r.get("test_acc") is not None]
    best_acc, best_round = max(accs, key=lambda t: (t[0], -t[1])) if accs else (None, None)
    last = rows[-1] if rows else {}
    return {
        "status": status,
        "rounds_done": last.get("round", 0),
        "final_test_acc": last.get("test_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "best_test_acc": best_acc,
        "best_round": best_round,
        "seconds": seconds,
        "num_params": num_params,
        "config": config,
    }
