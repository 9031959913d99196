#!/usr/bin/env bash
# GPU checks that CI (CPU only) cannot do: run from the repo root on a CUDA machine.
#
#   scripts/gpu_check.sh bench      # the H100 targets: CIFAR-10 CNN, 100 clients, E=5, B=50, p=0.1 and 1.0 (fp32, tf32, bf16)
#   scripts/gpu_check.sh paths      # CUDA paths: deterministic=true repeats bit for bit, pinned and mmap state, TF32 flags
#   scripts/gpu_check.sh tests      # the CPU test suite with CUDA visible (device=auto puts most runs on the GPU)
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
case "$stage" in
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
