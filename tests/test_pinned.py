"""Refactors must not move results: metrics of the synthetic default, stored before the change.

``tests/pinned/metrics.json`` was written by ``tests/pinned/make_pins.py`` on the code before the
algorithm-interface and house refactors (torch 2.14.1, CPU, one thread). Every metric column but
``wall_s`` must match bit for bit (float.hex). The fast test runs the first rounds of every case (a
run's first r rows do not depend on how many rounds follow); the slow one runs all of them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config

PINS = json.loads((Path(__file__).parent / "pinned" / "metrics.json").read_text())
CASES = sorted(PINS["cases"])
FAST_ROUNDS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def metrics_of(case: str, rounds: int, tmp_path: Path) -> list[dict[str, str]]:
    from fedrun.runner import run

    base = [o for o in PINS["base"] if not o.startswith("rounds=")] + [f"rounds={rounds}"]
    cfg = compose_config(*base, *PINS["cases"][case]["overrides"])
    run(cfg, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as f:
        return [{k: float(v).hex() for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("case", CASES)
def test_first_rounds_are_pinned(case: str, tmp_path: Path) -> None:
    assert metrics_of(case, FAST_ROUNDS, tmp_path) == PINS["cases"][case]["rows"][:FAST_ROUNDS]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_all_rounds_are_pinned(case: str, tmp_path: Path) -> None:
    assert metrics_of(case, PINS["rounds"], tmp_path) == PINS["cases"][case]["rows"]
