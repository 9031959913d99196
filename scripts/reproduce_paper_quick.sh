#!/usr/bin/env bash
# `make reproduce-paper-quick`: a reduced version of the paper grid that finishes in minutes on a CPU:
# the synthetic data (all four algorithms, full and 10% participation, 2 seeds, 20 rounds, 1 epoch) and the
# real Shakespeare texts (5 roles of 100 samples, FedDyn and FedAvg, 4 rounds), then fedrun-report into
# outputs/paper-quick/. Targets are fedrun's choice for this reduced setting (docs/paper.md has none for it).
# Re-running skips finished runs. Nothing outside the repository is needed: the plays come from where a
# user's first data=shakespeare run gets them (downloaded once, 5.4 MB, into $FEDRUN_DATA/shakespeare or
# ~/.cache/fedrun/data/shakespeare); SHAKESPEARE=<folder> reads them from a folder instead (CI:
# SHAKESPEARE=../shared/data/shakespeare make reproduce-paper-quick).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/paper-quick}
PY=${PY:-python3}
if command -v fedrun > /dev/null && command -v fedrun-report > /dev/null; then
  FEDRUN=(fedrun) REPORT=(fedrun-report)
else  # not installed as commands (a fresh clone before `make install`): the modules from this checkout
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  FEDRUN=("$PY" -m fedrun) REPORT=("$PY" -m fedrun.report.cli)
fi
SHAKESPEARE_ROOT=()
if [ -n "${SHAKESPEARE:-}" ]; then
  SHAKESPEARE_ROOT=("data.root=$SHAKESPEARE")
fi
status=0
"${FEDRUN[@]}" -m experiment=paper_synthetic "hydra.sweep.dir=$OUT/runs/synthetic" \
  algo=feddyn,fedavg,fedprox,scaffold participation=0.1,1.0 seed=0,1 \
  rounds=20 local_epochs=1 "targets=[0.7,0.8]" progress=false "$@" || status=1
"${FEDRUN[@]}" -m experiment=paper_shakespeare "hydra.sweep.dir=$OUT/runs/shakespeare" "${SHAKESPEARE_ROOT[@]}" \
  algo=feddyn,fedavg participation=1.0 data.iid=false seed=0 \
  num_clients=5 data.train_per_client=100 data.test_per_client=40 rounds=4 local_epochs=1 \
  "targets=[0.15,0.2]" progress=false "$@" || status=1
for d in "$OUT"/runs/*/; do  # per dataset (its own targets): curves by algorithm, one figure per participation
  "${REPORT[@]}" "$d" --out "$OUT/$(basename "$d")" --group-by algo participation --facet participation || status=1
done
"${REPORT[@]}" "$OUT/runs" --out "$OUT" --group-by data algo participation --targets > /dev/null || status=1  # all runs, no targets
exit $status
