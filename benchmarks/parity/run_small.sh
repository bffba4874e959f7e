#!/usr/bin/env bash
# The parity runs on the shipped dataset at the learning benchmark's small scale,
# one at a time: the authors' code at seeds 0-4 first (it has no runs before
# these, and one costs about a third of one of ours), then seeds 3 and 4 of our
# two rows (learning_small.csv has their seeds 0-2).
# Resumable: finished runs are in the csvs and are skipped.
#   JAX_PYTHON=/work/jaxenv/bin/python MISA_AUTHORS_DIR=/path/to/MISA benchmarks/parity/run_small.sh
# EVAL_SEEDING=once scores the authors' code as the script did up to commit
# 45600be, where the committed rows of ours were made (see parity_small.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
JAX_PY=${JAX_PYTHON:?set JAX_PYTHON to the JAX environment python (see benchmarks/parity/README.md)}
export OMP_NUM_THREADS=1
SMALL=(preset=demo optim.gradient_steps=4000 logger.eval_iter=500)  # learning.py's small scale
ours() {  # method seed
  "$PY" benchmarks/learning.py --scale small --methods "$1" \
    --datasets pendulum-medium-replay-v0 --seeds "$2"
}
theirs() {  # seed
  "$JAX_PY" benchmarks/parity/train_authors.py --scale small \
    --eval-seeding "${EVAL_SEEDING:-per-evaluation}" "${SMALL[@]}" env.seed="$1"
}
for seed in 3 4 0 1 2; do
  theirs "$seed"
done
for seed in 3 4; do
  ours misa "$seed"
  ours misa-authors-sampler "$seed"
done
