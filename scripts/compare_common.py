"""What scripts/compare_seeds.py and scripts/compare_algorithms.py share: their command line's common options."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parser(doc: str) -> argparse.ArgumentParser:
    """--algos, --runs, --figure, --reuse and the positional fedrun overrides (a script adds its own options)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["feddyn", "fedavg", "fedprox", "scaffold"])
    p.add_argument("--runs", type=Path, default=REPO / "outputs" / "compare" / "synthetic")
    p.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "synthetic_compare.png")
    p.add_argument("--reuse", action="store_true", help="only read the run directories already under --runs")
    p.add_argument("overrides", nargs="*", help="extra fedrun overrides for every run (e.g. rounds=50)")
    return p
