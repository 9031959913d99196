"""Writes tests/pinned/metrics.json: the metrics of short synthetic-default runs, stored before the
algorithm-interface and house refactors so that they can be checked to stay bit-identical.

Run from the repo root: ``python tests/pinned/make_pins.py``. Each case is the default config
(FedDyn's synthetic example: 20 devices, p=0.1, E=10, B=10) with the overrides below and
``rounds=ROUNDS``; every metric column but ``wall_s`` is stored as float.hex for exact comparison.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

ROUNDS = 12
BASE = [f"rounds={ROUNDS}", "progress=false", "device=cpu", "checkpoint_every=0"]
CASES = {
    "feddyn": ["algo=feddyn"],
    "feddyn_paper": ["algo=feddyn_paper"],
    "fedavg": ["algo=fedavg"],
    "fedprox": ["algo=fedprox"],
    "scaffold": ["algo=scaffold"],
    "scaffold_paper": ["algo=scaffold_paper"],
    "fedadam": ["algo=fedadam"],
    "fedadam_sgd": ["algo=fedopt_sgd", "algo.server_lr=0.01"],
    # unequal client sizes: the n_k weights of every method and the evaluated means
    "feddyn_unbalanced": ["algo=feddyn", "partition=unbalanced", "participation=0.3"],
    "fedavg_unbalanced": ["algo=fedavg", "partition=unbalanced", "participation=0.3"],
    "scaffold_unbalanced": ["algo=scaffold", "partition=unbalanced", "participation=0.3"],
}
ENGINES = ("vectorized", "sequential")


def run_case(overrides: list[str]) -> list[dict[str, str]]:
    from conftest import compose_config
    from fedrun.runner import run

    cfg = compose_config(*BASE, *overrides)
    with tempfile.TemporaryDirectory() as d:
        run(cfg, Path(d) / "run")
        import csv

        with (Path(d) / "run" / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
    return [{k: float(v).hex() for k, v in row.items() if k != "wall_s"} for row in rows]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    out = {"rounds": ROUNDS, "base": BASE, "cases": {}}
    for name, overrides in CASES.items():
        for engine in ENGINES:
            out["cases"][f"{name}/{engine}"] = {
                "overrides": overrides + [f"engine={engine}"],
                "rows": run_case(overrides + [f"engine={engine}"]),
            }
    (HERE / "metrics.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
