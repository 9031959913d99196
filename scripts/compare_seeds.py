"""Run several algorithms over several seeds on one problem; draw mean ± std curves in a 2x2 figure.

The README's comparison (synthetic data with heterogeneous solutions and data, 100 clients,
participation 0.1, 200 rounds):

    python scripts/compare_seeds.py

runs ``fedrun algo=X seed=S`` for each algorithm and seed (``--seeds``, one run directory each under
``--runs``), or with ``--reuse`` only reads the ``metrics.csv`` files already there, then writes the
figure (2x2 panels, mean over the seeds with a band of ± one sample std, ddof=1; PNG, PDF and SVG)
and prints a markdown table of the final round (mean ± std over the seeds). Within one seed every
algorithm sees the same data, initial model and active clients, so the curves differ only by the
algorithm; the seeds change all of these.

On the synthetic data the test set is the training data (``data.test_fraction=0``, the reference
code's choice), so ``test_loss`` is the server model's loss on all training data, the federated
objective; ``train_loss`` is the mean cross-entropy of the active clients over their local steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
SETTING = [
    "data=synthetic", "data.alpha=1", "data.beta=1", "data.iid_solution=false", "data.iid_data=false",
    "partition=natural", "num_clients=100", "participation=0.1", "rounds=200",
]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import compare_common  # noqa: E402  (the options both compare scripts take)
from fedrun.report import style as figures  # noqa: E402  (colours, labels, saving: the same as every fedrun figure)
from fedrun.report.figures import algo_curves, draw_panels  # noqa: E402  (the 2x2 panel of fedrun-report --panels)


def run_algorithm(algo: str, seed: int, run_dir: Path, overrides: list[str]) -> None:
    """``fedrun algo=<algo> seed=<seed>`` with the comparison's setting into ``run_dir``."""
    cmd = [sys.executable, "-m", "fedrun", f"algo={algo}", f"seed={seed}", *SETTING, *overrides, "quiet=true", f"hydra.run.dir={run_dir}"]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)


def load(runs: Path, algos: list[str], seeds: list[int]) -> dict[str, list[pd.DataFrame]]:
    out: dict[str, list[pd.DataFrame]] = {}
    for algo in algos:
        for seed in seeds:
            path = runs / algo / f"seed{seed}" / "metrics.csv"
            if not path.exists():
                raise SystemExit(f"compare_algorithms: {path} does not exist: run without --reuse first.")
            out.setdefault(algo, []).append(pd.read_csv(path).set_index("round"))
    return out


def figure(frames: dict[str, list[pd.DataFrame]], path: Path, title: str, smooth: int = 10) -> None:
    """fedrun-report's 2x2 panel (``--panels``), one curve per algorithm: mean over the seeds, band ± one
    sample std (ddof=1)."""
    draw_panels(algo_curves(frames, PARAMS), path, title, smooth)
    print(f"figure: {path} (+ .pdf, .svg)")


# The hyper-parameters shown in the labels (the values of conf/algo/*.yaml).
PARAMS = {"feddyn": {"alpha": 0.01}, "fedprox": {"mu": 1e-4}}


def table(frames: dict[str, list[pd.DataFrame]]) -> str:
    """Final round, mean ± sample std (ddof=1) over the seeds."""
    rows = []
    for algo, runs in frames.items():
        end = pd.DataFrame([df.iloc[-1] for df in runs])
        cell = (lambda col, scale=1.0, d=3: f"{scale * end[col].mean():.{d}f} ± {scale * end[col].std(ddof=1):.{d}f}"
                if len(end) > 1 else f"{scale * end[col].mean():.{d}f}")
        rows.append({"algorithm": figures.algo_label(algo, PARAMS.get(algo)), "training loss of the server model": cell("test_loss"),
                     "accuracy (%)": cell("test_acc", 100.0, 1), "local train loss": cell("train_loss"),
                     "communication (FedAvg rounds)": f"{end['comm_fedavg_rounds'].mean():g}"})
    return pd.DataFrame(rows).to_markdown(index=False)


def main(argv: list[str] | None = None) -> None:
    parser = compare_common.parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if not args.reuse:
        for algo in args.algos:
            for seed in args.seeds:
                run_algorithm(algo, seed, args.runs / algo / f"seed{seed}", args.overrides)
    frames = load(args.runs, args.algos, args.seeds)
    merged = dict(item.split("=", 1) for item in SETTING + args.overrides)  # later overrides win, as in Hydra
    title = (f"synthetic (α_s=β_s={merged['data.alpha']}, non-IID solutions and data), {merged['num_clients']} clients, "
             f"participation {merged['participation']}; mean ± std over seeds {','.join(map(str, args.seeds))}")
    figure(frames, args.figure, title)
    print(table(frames))


if __name__ == "__main__":
    main()
