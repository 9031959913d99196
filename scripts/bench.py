#!/usr/bin/env python3
"""Benchmark the engines: seconds per round, client-samples per second and peak memory.

    python scripts/bench.py [fedrun overrides ...] [out=PATH] [bench.<option>=VALUE ...]
    make bench ARGS="model=logreg participation=0.1 local_epochs=10 batch_size=10 out=bench.json"

Takes the same overrides as ``fedrun`` (Hydra syntax) plus ``out=PATH`` for the JSON and these
bench options:

- ``bench.engines=sequential,vectorized`` engines to time;
- ``bench.warmup=2`` untimed rounds first (allocations, caches, torch.compile);
- ``bench.rounds=3`` rounds per timed repeat; ``bench.repeats=3`` repeats (the same round numbers,
  so the same clients, each time); ``s_per_round`` is the best repeat, ``s_per_round_median`` the
  median (on a shared machine the best is the closest to what the hardware can do);
- ``bench.threads=0`` torch intra-op threads (0 = torch's default); with 1 thread,
  ``cpu_s_per_round`` (the process's CPU time, best repeat) is close to what an idle machine's wall
  clock would show, useful on a shared machine;
- ``bench.eval=none`` evaluation in each timed round: ``none`` (local training and aggregation
  only), ``run`` (what ``fedrun`` evaluates: the server model, plus the mean of the active models
  with ``eval_active`` and the mean of all models with ``eval_all``, every ``eval_every`` rounds) or
  ``reference`` (``run`` plus one evaluation on the training data: with ``eval_every=1``,
  ``eval_active=true`` and ``eval_all=true`` on the synthetic data, whose test set is its training
  data, that is the reference code's four evaluations a round: both averaged models on the test
  and on the training data);
- ``bench.ops=true`` count the aten operations of one round's local training (a
  ``TorchDispatchMode``, after the timing) and report them per local step: ``ops_per_step``
  (kernels) and ``views_per_step`` (view operations, no arithmetic). A step is one step of every
  client of a chunk at once in the vectorised engine, one client's step in the sequential one;
- ``bench.ceiling=true`` also time one large-batch training of the same model (batch = expected
  active clients x B, plain SGD): the practical throughput ceiling;
- ``bench.cudnn_benchmark=false`` let cuDNN time its convolution algorithms per shape
  (``torch.backends.cudnn.benchmark``); fedrun leaves it at torch's default (off), so this measures
  whether turning it on would pay;
- ``bench.fake_data=NAME`` (mnist, emnist_l, cifar10, cifar100) writes random uint8 images of the
  dataset's real shapes (e.g. CIFAR-10: 50000x3x32x32 + 10000 test, random labels) once into
  fedrun's tensor cache in a temporary folder and runs ``data=NAME`` on them, for timing where the
  real files are not available (the accuracy is meaningless);
- ``bench.startup=true`` instead times the command's answers that need no run (:func:`bench_startup`):
  ``fedrun algo.alpah=1`` (a typo: the sentence), ``fedrun --help`` and one shell-completion request
  (``COMP_LINE="fedrun algo=fed" fedrun -sc query=bash``), each a fresh process, ``bench.repeats``
  times (best and median wall time), plus the first typo after an edit of fedrun's sources (the
  signature cache rebuilt: torch imported once) and ``python -c "import torch"`` for scale;
- ``bench.matmul=true`` also measures a plain batched-matmul ceiling (:func:`matmul_ceiling`) with the
  engines' thread count, and reports each engine's achieved GFLOP/s against it;
- ``bench.ranks=1`` numbers of processes to time each engine with (e.g. ``bench.ranks=1,2``): N > 1
  runs the worker under ``torchrun --nproc-per-node N`` (one simulation over N ranks,
  :mod:`fedrun.distributed`; gloo on CPU, NCCL with one GPU per rank) and reports rank 0's time and
  the scaling efficiency ``s_per_round(1) / (N * s_per_round(N))``.

- ``bench.setup=1000,100000,1000000`` the many-devices mode instead of the engine timings: for each
  number of synthetic clients (``data.mean_samples=20``, ``data.sigma=0``, ``data.generator=vectorized``,
  ``data.test_samples=10000``, exactly 10 active clients a round under ``sampling=fixed_sparse``; other
  overrides apply on top), in a process of its own, the set-up seconds (``fedrun.runner.start``: data,
  partition, model, state, the guard's reference losses, from the threads rule of ``threads=null``
  on), the process's peak RSS, and seconds per round (best and median of ``bench.rounds`` timed
  rounds after ``bench.warmup``, each with the evaluation ``fedrun`` runs: ``eval_every=1``).

Precision is fedrun's own ``precision`` key (``precision=tf32`` to allow TF32 on CUDA; the default
``fp32`` is exact IEEE float32 for matmuls, convolutions and RNNs alike), applied in every worker
as ``fedrun`` applies it, together with ``deterministic``.

``train_flops_per_sample`` (forward and backward, torch's FLOP counter) times the client-samples
per second gives the arithmetic rate each engine reaches (``tflop_per_s``), to compare with the
hardware's peak.

Each engine runs in its own subprocess so that its peak memory (CUDA max allocated on a GPU, the
process's max RSS on CPU) is its own. CUDA work is synchronised before every clock reading.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH_DEFAULTS = {
    "engines": "sequential,vectorized",
    "warmup": "2",
    "rounds": "3",
    "repeats": "3",
    "threads": "0",
    "eval": "none",
    "ops": "true",
    "ceiling": "true",
    "fake_data": "",
    "cudnn_benchmark": "false",
    "ranks": "1",
    "startup": "false",
    "matmul": "true",
    "setup": "",
}
# Real shapes of the image datasets: (train images, test images, channels, side, classes).
FAKE_SHAPES = {
    "mnist": (60000, 10000, 1, 28, 10),
    "emnist_l": (48000, 8000, 1, 28, 10),
    "cifar10": (50000, 10000, 3, 32, 10),
    "cifar100": (50000, 10000, 3, 32, 100),
}


def parse(argv: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """Split the arguments into fedrun overrides, bench options and the JSON path."""
    overrides, bench, out = [], dict(BENCH_DEFAULTS), None
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "out":
            out = value
        elif key.startswith("bench."):
            name = key[len("bench."):]
            if name not in BENCH_DEFAULTS:
                sys.exit(f"bench: error: unknown option {key}; known: {', '.join('bench.' + k for k in BENCH_DEFAULTS)}")
            bench[name] = value
        else:
            overrides.append(arg)
    return overrides, bench, out


def fake_data_root(name: str) -> Path:
    """A data root whose fedrun tensor cache holds random images of ``name``'s real shapes (written once)."""
    from fedrun.data import cache

    n_train, n_test, channels, side, classes = FAKE_SHAPES[name]
    root = Path(tempfile.gettempdir()) / "fedrun-bench-fake" / name
    path = root / "fedrun_cache" / f"{name}.pt"
    if cache.load(path) is None:
        g = torch.Generator().manual_seed(0)
        tensors = {}
        for split, n in (("train", n_train), ("test", n_test)):
            tensors[f"x_{split}"] = torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)
            tensors[f"y_{split}"] = torch.randint(0, classes, (n,), generator=g)
        cache.save(path, tensors, {"dataset": name, "fake": True})
    return root


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from fedrun.config.schema import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda max allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"peak_memory_bytes": int(rss), "peak_memory_kind": "process max RSS"}


def setup_worker(bench: dict[str, str], cfg: Any) -> None:
    """Threads as asked; precision and determinism exactly as ``fedrun`` sets them for ``cfg``."""
    from fedrun.config import specs
    from fedrun.simulation.determinism import configure_determinism

    if int(bench["threads"]) > 0:
        torch.set_num_threads(int(bench["threads"]))
    configure_determinism(specs.read(cfg).numerics)
    if bench["cudnn_benchmark"].lower() == "true" and not bool(cfg.get("deterministic", False)):
        torch.backends.cudnn.benchmark = True


def train_flops_per_sample(exp: Any, batch: int) -> float:
    """Forward + backward FLOPs of one training sample (torch's FLOP counter on one batch, one model)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x, y = exp.data.x_train[:batch], exp.data.y_train[:batch]
    w = exp.theta.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        (grad,) = torch.autograd.grad(F.cross_entropy(exp.model(w, x), y), w)
    return counter.get_total_flops() / len(y)


def time_engine(overrides: list[str], bench: dict[str, str], engine: str) -> dict[str, Any]:
    """Seconds per round of ``engine`` after warm-up (runs in a worker process)."""
    from fedrun.simulation.evaluation import evaluate
    from fedrun.config import specs
    from fedrun.simulation.build import build
    from fedrun.simulation.round import evaluate_round, run_round

    from fedrun import distributed

    if bench["eval"] not in ("none", "run", "reference"):
        sys.exit(f"bench: error: bench.eval={bench['eval']} is unknown; use none, run or reference")
    cfg = compose_cfg(overrides + [f"engine={engine}", "progress=false"])
    setup_worker(bench, cfg)
    ranks = distributed.setup()  # under torchrun (bench.ranks=N): this rank of one run over N processes
    exp = build(specs.read(cfg))
    if exp.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(exp.device)
    samples = {"n": 0, "clients": 0}
    train = exp.engine.train

    def counting_train(model, theta, data, partition, clients, objective, hp, seed, round_idx):
        result = train(model, theta, data, partition, clients, objective, hp, seed, round_idx)
        sizes = torch.tensor([len(partition[c]) for c in clients.tolist()])
        if objective.steps is None:
            samples["n"] += int(hp.epochs * sizes.sum())
        else:
            samples["n"] += int((objective.steps.cpu() * sizes.clamp(max=hp.batch_size)).sum())
        samples["clients"] += len(clients)
        return result

    exp.engine.train = counting_train  # type: ignore[method-assign]
    warmup, rounds, repeats = int(bench["warmup"]), int(bench["rounds"]), int(bench["repeats"])

    def one_round(r: int) -> None:
        record = run_round(exp, r)
        if bench["eval"] != "none" and r % exp.spec.evaluation.every == 0:
            evaluate_round(exp, record.active_model)
            if bench["eval"] == "reference":
                evaluate(exp.model, exp.theta, exp.data.x_train, exp.data.y_train)

    for r in range(1, warmup + 1):
        one_round(r)
    times, cpu_times = [], []
    for _ in range(repeats):
        samples.update(n=0, clients=0)
        sync(exp.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for r in range(warmup + 1, warmup + rounds + 1):
            one_round(r)
        sync(exp.device)
        times.append((time.perf_counter() - start) / rounds)
        cpu_times.append((time.process_time() - cpu_start) / rounds)
    best = min(times)
    flops = train_flops_per_sample(exp, int(cfg.batch_size))
    ops = count_ops(exp, train, engine, warmup + 1) if bench["ops"].lower() == "true" else {}
    return {
        **ops,
        "s_per_round": best,
        "train_flops_per_sample": flops,
        "tflop_per_s": flops * samples["n"] / rounds / best / 1e12,
        "s_per_round_median": statistics.median(times),
        "cpu_s_per_round": min(cpu_times),  # this process's CPU time: with 1 thread, near the idle wall time
        "s_per_round_all": times,
        "client_samples_per_s": samples["n"] / rounds / best,
        "active_clients_per_round": samples["clients"] / rounds,
        "device": str(exp.device),
        "num_params": exp.model.num_params,
        "ranks": 1 if ranks is None else ranks.size,
        **peak_memory(exp.device),
    }


def count_ops(exp: Any, train: Any, engine: str, round_idx: int) -> dict[str, Any]:
    """Aten operations per local step of one round's local training (``round_idx``, repeated)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fedrun.simulation.round import run_round

    counts = {"ops": 0, "views": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            counts["views" if func.is_view else "ops"] += 1
            return func(*args, **(kwargs or {}))

    steps = {"n": 0}

    def counted(*args: Any) -> Any:
        with Count():
            result = train(*args)
        # a vectorised step moves every client of the chunk; a sequential one, one client
        taken = result.steps.max() if engine == "vectorized" else result.steps.sum()
        steps["n"] += int(taken) if len(result.steps) else 0
        return result

    exp.engine.train = counted
    run_round(exp, round_idx)
    n = max(steps["n"], 1)
    return {"ops_per_step": counts["ops"] / n, "views_per_step": counts["views"] / n, "local_steps_counted": steps["n"]}


def time_ceiling(overrides: list[str], bench: dict[str, str]) -> dict[str, Any]:
    """Throughput of one large-batch SGD training of the same model: batch = E[active] x B."""
    import torch.nn.functional as F

    from fedrun.config.schema import choice
    from fedrun.config import specs
    from fedrun.simulation.build import build

    cfg = compose_cfg(overrides + ["progress=false", "engine=sequential"])
    setup_worker(bench, cfg)
    exp = build(specs.read(cfg))
    batch = max(1, round(float(cfg.participation) * int(cfg.num_clients))) * int(cfg.batch_size)
    n = len(exp.data.y_train)
    batch = min(batch, n)
    g = torch.Generator().manual_seed(0)
    g_aug = torch.Generator().manual_seed(1)
    w = exp.theta.clone()

    def step(w: torch.Tensor) -> torch.Tensor:
        rows = torch.randint(0, n, (batch,), generator=g).to(exp.device)
        x, y = exp.data.x_train[rows], exp.data.y_train[rows]
        if exp.data.augment is not None:
            x = exp.data.augment(x, g_aug)
        w = w.detach().requires_grad_(True)
        with torch.autocast(exp.device.type, dtype=torch.bfloat16, enabled=choice(cfg.precision) == "bf16"):
            logits = exp.model(w, x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), w)
        return (w - 0.01 * grad).detach()

    for _ in range(5):
        w = step(w)
    steps, times = 20, []
    for _ in range(int(bench["repeats"])):
        sync(exp.device)
        start = time.perf_counter()
        for _ in range(steps):
            w = step(w)
        sync(exp.device)
        times.append(time.perf_counter() - start)
    rate = batch * steps / min(times)
    return {"batch_size": batch, "samples_per_s": rate, "tflop_per_s": rate * train_flops_per_sample(exp, 50) / 1e12, "device": str(exp.device)}


SETUP_OVERRIDES = ["data=synthetic", "partition=natural", "data.mean_samples=20", "data.sigma=0", "data.generator=vectorized",
                   "data.test_samples=10000", "sampling=fixed_sparse", "eval_every=1", "quiet=true", "checkpoint_every=0"]


def setup_overrides(clients: int, overrides: list[str]) -> list[str]:
    """bench.setup's settings for ``clients`` synthetic clients, 10 of them active a round."""
    return [*SETUP_OVERRIDES, f"num_clients={clients}", f"participation={10 / clients!r}", *overrides]


def time_setup(overrides: list[str], bench: dict[str, str], clients: int) -> dict[str, Any]:
    """One process: fedrun's set-up of ``clients`` clients, its peak RSS, then its rounds."""
    from fedrun.runner import evaluate_round, run_round, start

    began = time.perf_counter()
    cfg = compose_cfg(setup_overrides(clients, overrides))
    with tempfile.TemporaryDirectory() as tmp:
        exp, _, _ = start(cfg, Path(tmp) / "run")
        setup_s = time.perf_counter() - began
        setup_rss = peak_memory(exp.device)["peak_memory_bytes"]
        from fedrun.simulation.threads import apply_threads

        apply_threads(exp.spec.threads, exp)
        times = []
        warmup, rounds = int(bench["warmup"]), int(bench["rounds"])
        for r in range(1, warmup + rounds + 1):
            start_round = time.perf_counter()
            record = run_round(exp, r)
            evaluate_round(exp, record.active_model)
            if r > warmup:
                times.append(time.perf_counter() - start_round)
    return {
        "clients": clients, "samples": int(len(exp.data.y_train)), "setup_s": setup_s, "setup_peak_rss_bytes": setup_rss,
        "s_per_round": min(times), "s_per_round_median": statistics.median(times), "active_clients": int(record.active_clients),
        "test_samples": int(len(exp.data.y_test)), "torch_threads": torch.get_num_threads(), **peak_memory(exp.device),
    }


def setup_markdown(result: dict[str, Any]) -> str:
    lines = ["| clients | samples | set-up s | peak RSS after set-up | peak RSS | s / round (best) | s / round (median) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["setup"]:
        lines.append(f"| {r['clients']:,} | {r['samples']:,} | {r['setup_s']:.1f} | {r['setup_peak_rss_bytes'] / 2**30:.2f} GiB "
                     f"| {r['peak_memory_bytes'] / 2**30:.2f} GiB | {r['s_per_round']:.4f} | {r['s_per_round_median']:.4f} |")
    return "\n".join(lines)


def main_setup(overrides: list[str], bench: dict[str, str], worker_args: list[str], out: str | None) -> None:
    """bench.setup: one process per number of clients."""
    result: dict[str, Any] = {"overrides": overrides, "bench": bench, "machine": machine(), "setup": []}
    for clients in [int(c) for c in bench["setup"].split(",") if c]:
        print(f"bench: set-up of {clients:,} clients ...", file=sys.stderr)
        result["setup"].append(run_worker(f"setup:{clients}", worker_args))
    result["load_average_after"] = os.getloadavg()
    result["markdown"] = setup_markdown(result)
    report(result, out)


def report(result: dict[str, Any], out: str | None) -> None:
    """Print the result's markdown table; with ``out``, write the whole result there as JSON."""
    print(result["markdown"])
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"bench: wrote {out}", file=sys.stderr)


def worker(argv: list[str]) -> None:
    what = argv[0]
    overrides, bench, _ = parse(argv[1:])
    if what.startswith("setup:"):
        result = time_setup(overrides, bench, int(what.split(":", 1)[1]))
    else:
        result = time_ceiling(overrides, bench) if what == "ceiling" else time_engine(overrides, bench, what)
    if int(os.environ.get("RANK", "0")) == 0:
        print("BENCH-RESULT " + json.dumps(result))


def run_worker(what: str, argv: list[str], ranks: int = 1) -> dict[str, Any]:
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    proc = subprocess.run([*launch, __file__, "--worker", what, *argv], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    sys.exit(f"bench: error: the {what} run failed (exit {proc.returncode}); its output is above.")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| engine | s / round (best) | s / round (median) | ops / step (+ views) | client-samples / s | TFLOP/s | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["engines"].items():
        ops = f"{r['ops_per_step']:.1f} (+{r['views_per_step']:.1f})" if "ops_per_step" in r else "-"
        lines.append(
            f"| {name} | {r['s_per_round']:.4f} | {r['s_per_round_median']:.4f} | {ops} | {r['client_samples_per_s']:,.0f} "
            f"| {r['tflop_per_s']:.3g} | {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_kind']}) |"
            + (f" scaling efficiency {r['scaling_efficiency']:.0%} |" if "scaling_efficiency" in r else "")
        )
    if "speedup" in result:
        lines.append(f"\nvectorized / sequential speed-up per round: **{result['speedup']:.2f}x**")
    if "matmul_ceiling" in result:
        m = result["matmul_ceiling"]
        rates = ", ".join(f"{name} {r['gflop_per_s']:.2f} GFLOP/s ({r['fraction_of_matmul_ceiling']:.1%})" for name, r in result["engines"].items())
        lines.append(f"batched-matmul ceiling ({m['batch']}x{m['size']}^2, {m['threads']} threads): {m['gflop_per_s']:.1f} GFLOP/s; {rates}")
    if "ceiling" in result:
        c = result["ceiling"]
        lines.append(
            f"large-batch ceiling (batch {c['batch_size']}): {c['samples_per_s']:,.0f} samples/s; "
            f"vectorized reaches {result.get('vectorized_fraction_of_ceiling', float('nan')):.0%} of it"
        )
    return "\n".join(lines)


def _fedrun_command() -> list[str]:
    """The console script when installed (what a user's shell runs), else ``python -m fedrun``."""
    import shutil

    found = shutil.which("fedrun")
    return [found] if found else [sys.executable, "-m", "fedrun"]


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - began


def bench_startup(bench: dict[str, str]) -> dict[str, Any]:
    """Wall time of the answers that need no run, each a fresh process (see the module docstring)."""
    from fedrun.config import signatures

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    fedrun = _fedrun_command()
    cases = {
        "typo (fedrun algo.alpah=1)": (fedrun + ["algo.alpah=1"], env),
        "fedrun --help": (fedrun + ["--help"], env),
        "completion (fedrun algo=fed<TAB>)": (fedrun + ["-sc", "query=bash"], {**env, "COMP_LINE": "fedrun algo=fed", "COMP_POINT": "15"}),
    }
    _wall(fedrun + ["algo.alpah=1"], env)  # a warm cache and warm file caches, as after the first command
    out: dict[str, Any] = {"command": fedrun, "load_average_1min": os.getloadavg()[0], "cases": {}}
    for name, (cmd, case_env) in cases.items():
        times = [_wall(cmd, case_env) for _ in range(int(bench["repeats"]))]
        out["cases"][name] = {"best_s": min(times), "median_s": statistics.median(times)}
    signatures.cache_path().unlink(missing_ok=True)  # as after an edit: the next command rebuilds the cache
    out["cases"]["typo, first after an edit (cache rebuilt)"] = {"best_s": _wall(fedrun + ["algo.alpah=1"], env), "median_s": None}
    out["cases"]["python -c 'import torch' (for scale)"] = {"best_s": min(_wall([sys.executable, "-c", "import torch"], env) for _ in range(2)), "median_s": None}
    lines = ["| command | best s | median s |", "|---|---:|---:|"]
    for name, r in out["cases"].items():
        lines.append(f"| {name} | {r['best_s']:.2f} | {'-' if r['median_s'] is None else format(r['median_s'], '.2f')} |")
    out["markdown"] = "\n".join(lines) + f"\n\nload average {out['load_average_1min']:.2f}, torch {torch.__version__}"
    return out


def matmul_ceiling(threads: int, size: int = 512, batch: int = 8, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of a plain batched float32 matmul ``[batch, size, size] @ [batch, size, size]`` (2 size^3
    FLOPs per matrix) with ``threads`` threads (0: torch's default): what this CPU/GPU reaches on the
    friendliest dense arithmetic, the ceiling the engines' achieved rate is compared with."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g = torch.Generator(device="cpu").manual_seed(0)
        a, b = (torch.randn(batch, size, size, generator=g).to(device) for _ in range(2))
        torch.bmm(a, b)
        sync(device)
        best = math.inf
        for _ in range(repeats):
            began = time.perf_counter()
            torch.bmm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - began)
        return {"size": size, "batch": batch, "threads": torch.get_num_threads(), "gflop_per_s": 2 * batch * size**3 / best / 1e9}
    finally:
        torch.set_num_threads(before)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--worker":
        worker(argv[1:])
        return
    overrides, bench, out = parse(argv)
    if bench["startup"].lower() == "true":
        result = {"startup": bench_startup(bench), "machine": machine()}
        print(result["startup"]["markdown"])
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=2) + "\n")
        return
    worker_args = list(argv)
    if bench["fake_data"]:
        name = bench["fake_data"]
        if name not in FAKE_SHAPES:
            sys.exit(f"bench: error: bench.fake_data={name} is unknown; use one of {', '.join(FAKE_SHAPES)}")
        root = fake_data_root(name)
        extra = [f"data={name}", f"data.root={root}", "data.download=false"]
        overrides += extra
        worker_args = [a for a in worker_args if not a.startswith(("bench.fake_data", "out="))] + extra
    if bench["setup"]:
        main_setup(overrides, bench, worker_args, out)
        return
    result: dict[str, Any] = {"overrides": overrides, "bench": bench, "machine": machine(), "engines": {}}
    counts = [int(n) for n in bench["ranks"].split(",") if n]
    for engine in [e for e in bench["engines"].split(",") if e]:
        for n in counts:  # key "vectorized" for one process, "vectorized x2" for two ranks
            key = engine if n == 1 else f"{engine} x{n}"
            print(f"bench: timing engine={engine} on {n} process(es) ...", file=sys.stderr)
            result["engines"][key] = run_worker(engine, worker_args, n)
            if n > 1 and engine in result["engines"]:
                one = result["engines"][engine]["s_per_round"]
                result["engines"][key]["scaling_efficiency"] = one / (n * result["engines"][key]["s_per_round"])
    engines = result["engines"]
    if "sequential" in engines and "vectorized" in engines:
        result["speedup"] = engines["sequential"]["s_per_round"] / engines["vectorized"]["s_per_round"]
    if bench["ceiling"].lower() == "true":
        print("bench: timing the large-batch ceiling ...", file=sys.stderr)
        result["ceiling"] = run_worker("ceiling", worker_args)
        if "vectorized" in engines:
            result["vectorized_fraction_of_ceiling"] = (
                engines["vectorized"]["client_samples_per_s"] / result["ceiling"]["samples_per_s"]
            )
    if bench["matmul"].lower() == "true":
        result["matmul_ceiling"] = matmul_ceiling(int(bench["threads"]))
        for r in engines.values():
            r["gflop_per_s"] = 1e3 * r["tflop_per_s"]
            r["fraction_of_matmul_ceiling"] = r["gflop_per_s"] / result["matmul_ceiling"]["gflop_per_s"]
    result["markdown"] = markdown(result)
    report(result, out)


if __name__ == "__main__":
    main(sys.argv[1:])
