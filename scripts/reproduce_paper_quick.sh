#!/usr/bin/env bash
# `make reproduce-paper-quick`: a reduced version of the paper grid that finishes in minutes on a CPU:
# the synthetic data (all four algorithms, full and 10% participation, 2 seeds, 20 rounds, 1 epoch) and the
# real Shakespeare texts (../shared/data/shakespeare, 5 roles of 100 samples, FedDyn and FedAvg, 4 rounds),
# then fedrun-report into outputs/paper-quick/. Targets are fedrun's choice for this reduced setting
# (docs/paper.md has none for it). Re-running skips finished runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/paper-quick}
SHAKESPEARE=${SHAKESPEARE:-../shared/data/shakespeare}
status=0
fedrun -m experiment=paper_synthetic "hydra.sweep.dir=$OUT/runs/synthetic" \
  algo=feddyn,fedavg,fedprox,scaffold participation=0.1,1.0 seed=0,1 \
  rounds=20 local_epochs=1 "targets=[0.7,0.8]" progress=false "$@" || status=1
if [ -d "$SHAKESPEARE" ]; then
  fedrun -m experiment=paper_shakespeare "hydra.sweep.dir=$OUT/runs/shakespeare" "data.root=$SHAKESPEARE" \
    algo=feddyn,fedavg participation=1.0 data.iid=false seed=0 \
    num_clients=5 data.train_per_client=100 data.test_per_client=40 rounds=4 local_epochs=1 \
    "targets=[0.15,0.2]" progress=false "$@" || status=1
else
  echo "note: $SHAKESPEARE not found: the quick grid runs the synthetic data only"
fi
for d in "$OUT"/runs/*/; do  # per dataset (its own targets): curves by algorithm, one figure per participation
  fedrun-report "$d" --out "$OUT/$(basename "$d")" --group-by algo participation --facet participation || status=1
done
fedrun-report "$OUT/runs" --out "$OUT" --group-by data algo participation --targets > /dev/null || status=1  # all runs, no targets
exit $status
