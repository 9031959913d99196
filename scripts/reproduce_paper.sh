#!/usr/bin/env bash
# `make reproduce-paper`: the FedDyn paper's grid (conf/experiment/paper_<dataset>.yaml) through Hydra
# multirun, then fedrun-report into outputs/paper/ with docs/paper.md's published numbers beside ours.
# A GPU job: thousands of runs of up to 1000 rounds. Re-running it skips every finished run
# (skip_finished: true and one fixed dir per config), so it can be stopped and started again.
#   DATASETS="cifar10" scripts/reproduce_paper.sh                       # one dataset
#   scripts/reproduce_paper.sh hydra/launcher=joblib_gpu hydra.launcher.n_jobs=4 hydra/callbacks=gpu_slots
#   scripts/reproduce_paper.sh hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
# Extra arguments go to every `fedrun -m` call (launcher, device, data.root, fewer seeds: seed=0 ...).
# Then FL-Simulator's CIFAR-10 table (conf/experiment/fl_simulator_cifar10.yaml, ResNet-18-GN: the
# grid plus one sweep per algorithm with its own FL-Simulator values) into $OUT/fl_simulator/, with
# scripts/fl_simulator_published.csv's accuracies beside fedrun's (accuracy.md). FL_SIMULATOR=0 skips it;
# FL_SIMULATOR=only runs only it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/paper}
DATASETS=${DATASETS:-"cifar10 cifar100 mnist emnist_l shakespeare synthetic"}
FL_SIMULATOR=${FL_SIMULATOR:-1}
[ "$FL_SIMULATOR" = only ] && DATASETS=""
status=0
for d in $DATASETS; do
  echo "== $d: fedrun -m experiment=paper_$d $*"
  fedrun -m "experiment=paper_$d" "hydra.sweep.dir=$OUT/runs/$d" "$@" || { echo "warning: the $d sweep stopped early (rerun to go on)"; status=1; }
done
for d in $DATASETS; do  # per dataset: its own targets; curves by algorithm, one figure per setting
  [ -d "$OUT/runs/$d" ] && fedrun-report "$OUT/runs/$d" --out "$OUT/$d" --published scripts/paper_published.csv \
    --group-by algo partition participation --facet partition participation > /dev/null
done
[ -n "$DATASETS" ] && fedrun-report "$OUT/runs" --out "$OUT" --published scripts/paper_published.csv --group-by data algo partition participation --targets
if [ "$FL_SIMULATOR" != 0 ]; then
  FLS="$OUT/fl_simulator"
  for extra in "" "algo=feddyn algo.alpha=0.1 lr_decay=0.9995" "algo=fedprox algo.mu=0.1" "algo=fedadam algo.server_lr=0.1 algo.tau=0.01"; do
    echo "== fl_simulator_cifar10: fedrun -m experiment=fl_simulator_cifar10 $extra $*"
    # shellcheck disable=SC2086  # $extra is a list of overrides
    fedrun -m experiment=fl_simulator_cifar10 "hydra.sweep.dir=$FLS/runs" $extra "$@" || { echo "warning: the fl_simulator_cifar10 sweep stopped early (rerun to go on)"; status=1; }
  done
  [ -d "$FLS/runs" ] && fedrun-report "$FLS/runs" --out "$FLS" --published scripts/fl_simulator_published.csv \
    --group-by algo partition --facet partition > /dev/null
fi
exit $status
