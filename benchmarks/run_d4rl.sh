#!/usr/bin/env bash
# The D4RL-sized evidence, on the 2-core machine: two lanes side by side, Hopper-v5 and
# Walker2d-v5. Each lane makes its task's two sets (a SAC run stopped at D4RL's medium
# level), then trains every method's 5 seeds, one compiled group per method and set, at
# 100k updates (learning.py's `d4rl` scale). In the Hopper lane, once MISA has trained on
# Hopper medium-replay, the authors' code runs there (seeds 0-2,
# benchmarks/parity/run_scale.sh) when JAX_PYTHON and MISA_AUTHORS_DIR are set, before the
# other methods; the Walker2d lane ends with the authors' code on Walker2d medium-replay
# (seeds 0-2: does their MISA fall there as ours does?). Every step resumes where it
# stopped: rerun after an interruption.
#
#   JAX_PYTHON=/work/jaxenv/bin/python MISA_AUTHORS_DIR=/work/misa-authors \
#       nohup bash benchmarks/run_d4rl.sh > benchmarks/results/logs/run_d4rl.log 2>&1 &
#   python benchmarks/report.py --scale d4rl    # the tables and curves of the finished runs
#   python benchmarks/report.py --scale d4rl --in-progress   # the runs under way, so far
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHON=$PY OMP_NUM_THREADS=1
mkdir -p benchmarks/results/logs

lane() {  # task: generate its sets, then train on them
    local task=$1 sets
    sets=$("$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
import learning
print(' '.join(p for (t, _), p in learning.D4RL_SIZED.items() if t == '$task'))")
    for path in $sets; do
        if [ ! -f "$path" ]; then
            local cmd
            cmd=$("$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
import learning
print(learning.GENERATE['$path'])")
            echo "$(date -u +%FT%TZ) $task: $cmd"
            # the generator continues its SAC run from its last checkpoint
            ${cmd/python/$PY} --no-progress || return 1
            break  # one run makes both sets
        fi
    done
    if [ "$task" = hopper ]; then
        # MISA first, then the authors' code on the same set: the parity pair
        "$PY" benchmarks/learning.py --scale d4rl --agents \
            --datasets hopper-medium-replay-v0 --methods misa || return 1
        authors hopper-medium-replay-v0 || return 1
    fi
    local stems
    stems=$(for p in $sets; do basename "$p" .hdf5; done)
    echo "$(date -u +%FT%TZ) $task: training on $stems"
    # shellcheck disable=SC2086
    "$PY" benchmarks/learning.py --scale d4rl --agents --datasets $stems || return 1
    if [ "$task" = walker2d ]; then
        authors walker2d-medium-replay-v0 || return 1
    fi
}

authors() {
    if [ -z "${JAX_PYTHON:-}" ] || [ -z "${MISA_AUTHORS_DIR:-}" ]; then
        echo "JAX_PYTHON or MISA_AUTHORS_DIR unset: the authors' code is left out"
        return 0
    fi
    SEEDS="0 1 2" OURS=misa bash benchmarks/parity/run_scale.sh d4rl "$1"
}

lane hopper > benchmarks/results/logs/d4rl_hopper.log 2>&1 &
hopper=$!
lane walker2d > benchmarks/results/logs/d4rl_walker2d.log 2>&1 &
walker=$!
failed=0
wait "$hopper" || failed=$((failed + 1))
wait "$walker" || failed=$((failed + 1))
echo "$(date -u +%FT%TZ) done, $failed lane(s) failed (logs in benchmarks/results/logs/)"
exit "$failed"
