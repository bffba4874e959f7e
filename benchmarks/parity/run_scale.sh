#!/usr/bin/env bash
# The parity runs on one dataset of a learning-benchmark scale: the authors' code
# at seeds 0-4 (one process each), then our two rows (`misa`, `misa-authors-sampler`)
# with each row's seeds in one process, all with the scale's settings for that
# dataset (learning.py's SCALES). Resumable: finished runs are in the csvs.
#   JAX_PYTHON=/path/to/jax/venv/bin/python MISA_AUTHORS_DIR=/path/to/MISA \
#     benchmarks/parity/run_scale.sh mujoco hopper-medium-replay-v0
# SEEDS="0 1 2" and OURS="misa" choose other seeds and rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${1:?usage: run_scale.sh SCALE DATASET_STEM}
STEM=${2:?usage: run_scale.sh SCALE DATASET_STEM}
PY=${PYTHON:-python}
JAX_PY=${JAX_PYTHON:?set JAX_PYTHON to the JAX environment python (see benchmarks/parity/README.md)}
export OMP_NUM_THREADS=1
SEEDS=${SEEDS:-0 1 2 3 4}
OURS=${OURS:-misa misa-authors-sampler}
for seed in $SEEDS; do
  # the overrides learning.py gives our MISA on this dataset at this seed
  mapfile -t SETTINGS < <("$PY" - "$SCALE" "$STEM" "$seed" <<'PYEOF'
import sys
sys.path.insert(0, "benchmarks")
import learning
scale, stem, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
dataset = next(d for d in learning.SCALES[scale]["datasets"] if stem in d)
for item in learning.Job(scale, dataset, "misa", seed).overrides():
    if not item.startswith("num_agents="):
        print(item)
PYEOF
  )
  "$JAX_PY" benchmarks/parity/train_authors.py --scale "$SCALE" "${SETTINGS[@]}"
done
# shellcheck disable=SC2086
"$PY" benchmarks/learning.py --scale "$SCALE" --agents --datasets "$STEM" \
  --methods $OURS --seeds $SEEDS
