#!/usr/bin/env bash
# GPU checks that CI (CPU only) cannot do: run from the repo root on a CUDA machine.
#
#   scripts/gpu_check.sh bench      # the H100 targets: CIFAR-10 CNN, 100 clients, E=5, B=50, p=0.1 and 1.0 (fp32, tf32, bf16)
#   scripts/gpu_check.sh paths      # CUDA paths: deterministic=true repeats bit for bit, pinned and mmap state, TF32 flags
#   scripts/gpu_check.sh tests      # the CPU test suite with CUDA visible (device=auto puts most runs on the GPU)
#   scripts/gpu_check.sh all        # issue 25 Part B in one call: paths, tests and a bench grid, each step
#                                   # time-boxed, all done inside BUDGET_S (default 530 s); 7 files in $OUT:
#                                   # machine.txt verdicts.txt paths.txt tests.txt log.txt bench.json summary.md
#   GPU_CHECK_SMALL=1 scripts/gpu_check.sh all   # the same steps on a tiny problem, to try the script on a CPU
#
# Results go to $OUT (default gpu_check_out/), at most 8 files a stage (the device tool returns 8). Without hydra-core/omegaconf installed, wheels in .whl/
# (`make gpu-wheels` on a machine with internet) are installed into /tmp/site first. Each stage ends
# well inside 10 minutes on an H100; the benchmark data are random images of CIFAR-10's real shapes
# written into fedrun's tensor cache (bench.fake_data=cifar10), so nothing is downloaded.
set -uo pipefail
stage=${1:-bench}
out=${OUT:-gpu_check_out}
mkdir -p "$out"
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/machine.txt"
nvidia-smi >>"$out/machine.txt" 2>&1 || true

cifar="bench.fake_data=cifar10 model=cnn num_clients=100 local_epochs=5 batch_size=50"

# -- stage all: every step under `timeout`, one verdict line each, nothing past the budget ------------
budget=${BUDGET_S:-530}  # from the script's start ($SECONDS), the wheels' install included
step() {  # step NAME BOX_S COMMAND...: run COMMAND for at most BOX_S (less when the budget runs out)
    local name=$1 box=$2 left rc verdict t0
    shift 2
    left=$((budget - SECONDS - 15))  # 15 s kept for the summary
    if [ "$left" -lt 20 ]; then
        echo "$name: SKIPPED (budget of $budget s spent)" | tee -a "$out/verdicts.txt"; return 0
    fi
    [ "$box" -gt "$left" ] && box=$left
    t0=$SECONDS
    echo "== $name (box $box s): $*" >>"$out/log.txt"
    timeout -k 5 "$box" "$@" >>"$out/log.txt" 2>&1
    rc=$?
    case $rc in 0) verdict=ok ;; 124|137) verdict=TIMEOUT ;; *) verdict="FAILED (exit $rc)" ;; esac
    echo "$name: $verdict in $((SECONDS - t0)) s (box $box s)" | tee -a "$out/verdicts.txt"
}
bench_step() {  # bench_step LABEL BOX_S OVERRIDES...: one bench.py call, its JSON kept for the summary
    local label=$1 box=$2
    shift 2
    step "bench $label" "$box" python3 scripts/bench.py bench.warmup=1 bench.ops=false "$@" ${BENCH_ARGS:-} out="$scratch/$label.json"
}

case "$stage" in
all)
    scratch=$(mktemp -d)  # bench JSONs and run dirs: only the summary comes back
    : >"$out/verdicts.txt"
    if [ -n "${GPU_CHECK_SMALL:-}" ]; then  # a tiny problem and a few test files: the script's plumbing on a CPU
        problem="model=logreg num_clients=20 local_epochs=1 batch_size=10"
        tests="tests/test_fake_cuda.py tests/test_engines.py::test_chunked_equals_unchunked"
        big=0.5
    else
        problem=$cifar
        tests="tests"
        big=1.0
    fi
    step paths 100 env OUT="$scratch/paths" "$0" paths
    cp "$scratch/paths/paths.txt" "$out/paths.txt" 2>/dev/null
    plugins="$(python3 -c "import xdist" 2>/dev/null && echo "-n 8") $(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=90")"
    step tests 120 sh -c "python3 -m pytest -q -m 'not slow' -p no:cacheprovider $plugins $tests >'$out/tests.txt' 2>&1"
    { tail -n 2 "$out/tests.txt"; echo; } | grep -v '^ *$' | sed 's/^/  tests: /' | tee -a "$out/verdicts.txt"
    # the grid of issue 25 Part B, most wanted first: both engines in fp32 at p=0.1 and p=1.0 (with the
    # large-batch ceiling), the vectorised engine in tf32 and bf16, then CUDA graphs (engine.compile=true)
    bench_step p0.1_fp32 70 $problem participation=0.1 bench.rounds=2 bench.repeats=2
    bench_step p${big}_fp32 90 $problem participation=$big bench.rounds=1 bench.repeats=2
    for precision in tf32 bf16; do
        bench_step p0.1_$precision 45 $problem participation=0.1 precision=$precision bench.rounds=2 bench.repeats=2
        bench_step p${big}_$precision 45 $problem participation=$big precision=$precision bench.engines=vectorized bench.rounds=1 bench.repeats=2
    done
    for precision in fp32 bf16; do
        bench_step p0.1_${precision}_compile 90 $problem participation=0.1 precision=$precision engine.compile=true \
            bench.engines=vectorized bench.ceiling=false bench.warmup=3 bench.rounds=2 bench.repeats=2
    done
    bench_step p${big}_bf16_compile 60 $problem participation=$big precision=bf16 engine.compile=true \
        bench.engines=vectorized bench.ceiling=false bench.warmup=3 bench.rounds=1 bench.repeats=2
    python3 - "$scratch" "$out" <<'PY' || echo "summary: FAILED" | tee -a "$out/verdicts.txt"
"""bench.json (every bench result) and summary.md (s/round per setting against the issue's targets)."""
import json, sys
from pathlib import Path

scratch, out = Path(sys.argv[1]), Path(sys.argv[2])
results = {p.stem: json.loads(p.read_text()) for p in sorted(scratch.glob("*.json"))}
(out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
targets = {"0.1": 0.050, "1.0": 0.400}  # s/round, issue 25 Part B (CIFAR-10 CNN, 100 clients, E=5, B=50)
lines = ["| setting | engine | s / round | target | TFLOP/s | client-samples / s | of the ceiling | peak memory |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
for label, r in results.items():
    ceiling = r.get("ceiling", {}).get("samples_per_s")
    p = label.split("_")[0][1:]
    for engine, e in r["engines"].items():
        target = targets.get(p)
        verdict = "" if target is None else (f"{target:g} ({'met' if e['s_per_round'] <= target else 'missed'})")
        frac = f"{e['client_samples_per_s'] / ceiling:.0%}" if ceiling else "-"
        lines.append(f"| {label} | {engine} | {e['s_per_round']:.4f} | {verdict} | {e['tflop_per_s']:.3g} "
                     f"| {e['client_samples_per_s']:,.0f} | {frac} | {e['peak_memory_bytes'] / 2**20:,.0f} MiB |")
machine = next(iter(results.values()), {}).get("machine", {})
text = f"machine: {json.dumps(machine)}\n\n" + "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
PY
    echo "all: done in $SECONDS s of $budget" | tee -a "$out/verdicts.txt"
    ;;
bench)
    python3 scripts/bench.py $cifar participation=0.1 ${BENCH_ARGS:-} out="$out/bench_cifar_p01.json"
    python3 scripts/bench.py $cifar participation=1.0 bench.repeats=2 bench.rounds=2 ${BENCH_ARGS:-} out="$out/bench_cifar_p1.json"
    python3 scripts/bench.py $cifar participation=0.1 bench.engines=vectorized bench.cudnn_benchmark=true ${BENCH_ARGS:-} out="$out/bench_cifar_p01_cudnn.json"
    for p in 0.1 1.0; do  # exact float32 needs 40 (p=0.1) and 50 (p=1.0) TFLOP/s for the targets: compare TF32, bf16
        for precision in tf32 bf16; do
            python3 scripts/bench.py $cifar participation=$p precision=$precision bench.engines=vectorized ${BENCH_ARGS:-} out="$out/bench_cifar_p${p}_$precision.json"
        done
    done
    ;;
paths)
    run() { python3 -m fedrun progress=false "$@"; }
    small="data=synthetic num_clients=20 rounds=5"
    runs=$(mktemp -d)  # run dirs stay out of $OUT (too many files to bring back)
    status=0
    for i in 1 2; do run $small deterministic=true hydra.run.dir="$runs/det$i" || status=1; done
    if cmp -s <(cut -d, -f1-10 "$runs/det1/metrics.csv") <(cut -d, -f1-10 "$runs/det2/metrics.csv"); then
        echo "deterministic=true: two runs identical" | tee -a "$out/paths.txt"
    else
        echo "deterministic=true: runs DIFFER" | tee -a "$out/paths.txt"; status=1
    fi
    for placement in device pinned mmap; do
        run $small state_placement=$placement hydra.run.dir="$runs/state_$placement" || status=1
    done
    if cmp -s <(cut -d, -f1-10 "$runs/state_device/metrics.csv") <(cut -d, -f1-10 "$runs/state_pinned/metrics.csv") \
       && cmp -s <(cut -d, -f1-10 "$runs/state_device/metrics.csv") <(cut -d, -f1-10 "$runs/state_mmap/metrics.csv"); then
        echo "state placements device/pinned/mmap: identical metrics" | tee -a "$out/paths.txt"
    else
        echo "state placements: metrics DIFFER" | tee -a "$out/paths.txt"; status=1
    fi
    python3 -c "
from fedrun.simulation.determinism import configure_determinism, current_precision
from fedrun.config.specs import Numerics
configure_determinism(Numerics(False, 'fp32')); print('precision=fp32 ->', current_precision())
" | tee -a "$out/paths.txt"
    exit $status
    ;;
tests)
    python3 -m pytest -q -m "not slow" -x -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
    ;;
*)
    echo "usage: scripts/gpu_check.sh bench|paths|tests" >&2; exit 2
    ;;
esac
