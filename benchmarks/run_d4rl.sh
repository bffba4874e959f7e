#!/usr/bin/env bash
# The D4RL-sized evidence, on the 2-core machine: two lanes side by side, Hopper-v5 and
# Walker2d-v5. Each lane makes its task's two sets (a SAC run stopped at D4RL's medium
# level), then trains every method's 5 seeds, one compiled group per method and set, at
# 100k updates (learning.py's `d4rl` scale): the medium-replay set first, then the medium
# one. When JAX_PYTHON and MISA_AUTHORS_DIR are set, the authors' code runs on the
# medium-replay set too (seeds 0-2, benchmarks/parity/run_scale.sh): in the Hopper lane
# right after MISA there (the parity pair), in the Walker2d lane after every method there
# (does their MISA fall as ours does?). The Walker2d lane ends with MISA at a fixed
# temperature on its medium-replay set (learning.py's `misa-fixed-alpha-0.1`), after
# every method on its medium set. Every step resumes where it stopped: rerun after an
# interruption. LANES="walker2d" runs one lane (default: both).
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

from_learning() {  # print a Python expression over benchmarks/learning.py
    "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import learning; print($1)"
}

lane() {  # task: generate its sets, then train on them
    local task=$1 sets
    sets=$(from_learning \
        "' '.join(p for (t, _), p in learning.D4RL_SIZED.items() if t == '$task')")
    for path in $sets; do
        if [ ! -f "$path" ]; then
            local cmd
            cmd=$(from_learning "learning.GENERATE['$path']")
            echo "$(date -u +%FT%TZ) $task: $cmd"
            # the generator continues its SAC run from its last checkpoint
            ${cmd/python/$PY} --no-progress || return 1
            break  # one run makes both sets
        fi
    done
    local replay=$task-medium-replay-v0 stems
    if [ "$task" = hopper ]; then
        # MISA first, then the authors' code on the same set: the parity pair
        "$PY" benchmarks/learning.py --scale d4rl --agents \
            --datasets "$replay" --methods misa || return 1
        authors "$replay" || return 1
    fi
    echo "$(date -u +%FT%TZ) $task: training on $replay"
    # the main methods: the set's ablations run last, after the medium set's methods
    # shellcheck disable=SC2046
    "$PY" benchmarks/learning.py --scale d4rl --agents --datasets "$replay" \
        --methods $(from_learning "'misa', *learning.BASELINES") || return 1
    if [ "$task" = walker2d ]; then
        authors "$replay" || return 1
    fi
    stems=$(for p in $sets; do basename "$p" .hdf5; done)
    echo "$(date -u +%FT%TZ) $task: training on $stems"
    # shellcheck disable=SC2086
    "$PY" benchmarks/learning.py --scale d4rl --agents --datasets $stems || return 1
}

authors() {
    if [ -z "${JAX_PYTHON:-}" ] || [ -z "${MISA_AUTHORS_DIR:-}" ]; then
        echo "JAX_PYTHON or MISA_AUTHORS_DIR unset: the authors' code is left out"
        return 0
    fi
    SEEDS="0 1 2" OURS=misa bash benchmarks/parity/run_scale.sh d4rl "$1"
}

lanes=${LANES:-hopper walker2d}
for task in $lanes; do
    case $task in
        hopper | walker2d) ;;
        *) echo "LANES: unknown lane '$task' (the lanes: hopper, walker2d)" >&2; exit 2 ;;
    esac
done
pids=()
for task in $lanes; do
    lane "$task" >> "benchmarks/results/logs/d4rl_$task.log" 2>&1 &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=$((failed + 1))
done
echo "$(date -u +%FT%TZ) done, $failed lane(s) failed (logs in benchmarks/results/logs/)"
exit "$failed"
