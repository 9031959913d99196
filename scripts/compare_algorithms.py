"""Run several algorithms on the same problem and draw their convergence curves in one figure.

The README's comparison (synthetic data with heterogeneous solutions and data, 100 clients,
participation 0.1, 200 rounds):

    python scripts/compare_algorithms.py

runs ``fedrun algo=X`` for each algorithm (one run directory each under ``--runs``), with
``--multirun`` as one ``fedrun -m algo=X,Y,...`` sweep, or with ``--reuse`` only reads the
``metrics.csv`` files already there, then writes the figure (2x2 panels in fedrun's figure style;
PNG, PDF and SVG) and prints a markdown table of the final
round. The README's nine-method table (all of fedrun's methods, 100 rounds, unequal client sizes):

    python scripts/compare_algorithms.py --multirun --algos nine --runs outputs/compare/nine \
        --figure docs/figures/synthetic_compare_nine.png rounds=100 engine=vectorized data.sigma=0.3
 Every run sees the same data, initial model and active clients
(everything is seeded by ``seed``), so the curves differ only by the algorithm.

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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import compare_common  # noqa: E402  (the options both compare scripts take)
from fedrun.report import style as figures  # noqa: E402  (labels: the same as every fedrun figure)
from fedrun.report.figures import algo_curves, draw_panels  # noqa: E402  (the 2x2 panel of fedrun-report --panels)

SETTING = [
    "data=synthetic", "data.alpha=1", "data.beta=1", "data.iid_solution=false", "data.iid_data=false",
    "partition=natural", "num_clients=100", "participation=0.1", "rounds=200", "seed=0", "engine=sequential",
]
NINE = ["feddyn", "fedavg", "fedprox", "scaffold", "fedadam", "feddc", "fedspeed", "fedsmoo", "fednova"]


def merged(overrides: list[str]) -> list[str]:
    """SETTING with ``overrides`` applied (a later value of a key replaces the earlier one)."""
    return [f"{k}={v}" for k, v in dict(item.split("=", 1) for item in SETTING + overrides).items()]


def run_algorithm(algo: str, run_dir: Path, overrides: list[str]) -> None:
    """``fedrun algo=<algo>`` with the comparison's setting into ``run_dir``."""
    # One intra-op thread: the models are tiny, and on a shared machine extra threads only contend.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "fedrun", f"algo={algo}", *merged(overrides), "progress=false", f"hydra.run.dir={run_dir}"]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def run_multirun(algos: list[str], runs: Path, overrides: list[str]) -> None:
    """One Hydra multirun ``fedrun -m algo=a,b,...`` with the comparison's setting; run dirs ``runs/<algo>``."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [
        sys.executable, "-m", "fedrun", "-m", f"algo={','.join(algos)}", *merged(overrides), "progress=false",
        f"hydra.sweep.dir={runs}", "hydra.sweep.subdir=${hydra:runtime.choices.algo}",
    ]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def load(runs: Path, algos: list[str]) -> dict[str, pd.DataFrame]:
    out = {}
    for algo in algos:
        path = runs / algo / "metrics.csv"
        if not path.exists():
            raise SystemExit(f"compare_algorithms: {path} does not exist: run without --reuse first.")
        out[algo] = pd.read_csv(path)
    return out


def figure(frames: dict[str, pd.DataFrame], path: Path, title: str, smooth: int = 10) -> None:
    """fedrun-report's 2x2 panel (``--panels``) in fedrun's figure style (one colour and marker per
    algorithm, short labels, one legend below the axes); PNG, PDF and SVG."""
    draw_panels(algo_curves({algo: [df] for algo, df in frames.items()}), path, title, smooth)
    print(f"figure: {path} (+ .pdf, .svg)")


def title(overrides: list[str]) -> str:
    """The setting in a few words: ``synthetic, heterogeneous solutions and data, 100 clients, p=0.1, ...``."""
    cfg = dict(item.split("=", 1) for item in merged(overrides))
    hetero = [name for name, key in (("solutions", "data.iid_solution"), ("data", "data.iid_data")) if cfg.get(key) == "false"]
    parts = [cfg.get("data", "synthetic")]
    if hetero:
        parts.append("heterogeneous " + " and ".join(hetero))
    parts += [f"{cfg['num_clients']} clients", f"p={cfg['participation']}"]
    if float(cfg.get("data.sigma", 0) or 0) > 0:
        parts.append(f"unequal sizes data.sigma={cfg['data.sigma']}")
    parts += [f"{cfg['rounds']} rounds", f"seed {cfg['seed']}"]
    return ", ".join(parts)


def table(frames: dict[str, pd.DataFrame], last: int) -> str:
    rows = [
        f"| algorithm | server-model loss on training data, final (mean of last {last}) | accuracy, final | "
        "loss of mean of all clients' models, final | local train loss, final | comm (FedAvg rounds) |",
        "|---|---|---|---|---|---|",
    ]
    for algo, df in frames.items():
        end = df.iloc[-1]
        all_loss = f"{end['test_loss_all']:.4f}" if "test_loss_all" in df else "-"
        rows.append(
            f"| {figures.algo_label(algo)} | {end['test_loss']:.4f} ({df['test_loss'].tail(last).mean():.4f}) | "
            f"{100 * end['test_acc']:.2f}% | {all_loss} | {end['train_loss']:.4f} | {end['comm_fedavg_rounds']:g} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = compare_common.parser(__doc__)
    parser.add_argument("--multirun", action="store_true", help="all algorithms as one `fedrun -m` sweep (--algos nine: all nine methods)")
    parser.add_argument("--last", type=int, default=20, help="rounds averaged in the table's smoothed column")
    args = parser.parse_args(argv)
    if args.algos == ["nine"]:
        args.algos = NINE
    if args.multirun and not args.reuse:
        run_multirun(args.algos, args.runs, args.overrides)
    elif not args.reuse:
        for algo in args.algos:
            run_algorithm(algo, args.runs / algo, args.overrides)
    frames = load(args.runs, args.algos)
    figure(frames, args.figure, title(args.overrides))
    print(table(frames, args.last))


if __name__ == "__main__":
    main()
