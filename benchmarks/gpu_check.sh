#!/usr/bin/env bash
# The update's speed on a GPU, in one call of under 8 minutes: our eager,
# CUDA-graph, compiled and compiled-and-captured updates (1 and 10 agents,
# small and paper settings) and the authors' jitted JAX update, side by side.
#
#   bash benchmarks/gpu_check.sh --fetch AUTHORS_GIT_DIR
#       (here, with the package registries) downloads into .whl/ the wheels a
#       GPU image with torch and JAX lacks (torchrl, tensordict, distrax, tfp,
#       ...) and exports the authors' code (a sail-sg/MISA git directory) into
#       .authors/; both are git-ignored and travel with the call.
#   bash benchmarks/gpu_check.sh
#       (on the GPU machine) installs .whl/ into /tmp/site and runs the rows;
#       results go to benchmarks/results/bench_update_agents_gpu_*.{json,md}
#       and, where $OUT is set, are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch" ]]; then
    authors_git=${2:?usage: gpu_check.sh --fetch AUTHORS_GIT_DIR}
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.authors/' .git/info/exclude || echo '/.authors/' >> .git/info/exclude
    mkdir -p .whl .authors
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl \
        torchrl==0.14.1 tensordict==0.14.3 pyvers orjson \
        distrax tensorflow-probability ml-collections
    git --git-dir "$authors_git" archive HEAD | tar -x -C .authors
    du -sh .whl .authors
    exit 0
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
authors=()
[[ -d .authors ]] && authors=(--authors-dir .authors --jax-python python3 --authors-timeout 90)
common=(--device cuda --cudagraphs --steps 30 --paper-steps 20 --warmup 3)

# 1. eager and captured eager updates, the authors' JAX beside them (~2 min)
timeout 200 python3 benchmarks/bench_update.py "${common[@]}" "${authors[@]}" \
    --agents 1 10 --compiled-agents --tag gpu_eager \
    --note "One call on a lent GPU: eager and CUDA-graph rows, the authors' JAX."
# 2. compiled (the chain as one scan), and compiled with the chain's own
#    compiled transition captured whole in a CUDA graph (~4 min)
timeout 300 python3 benchmarks/bench_update.py "${common[@]}" \
    --agents --compiled-agents 1 10 --tag gpu_compiled \
    --note "One call on a lent GPU: compiled and compiled-and-captured rows."

if [[ -n "${OUT:-}" ]]; then
    cp benchmarks/results/bench_update_agents_gpu_eager.* \
        benchmarks/results/bench_update_agents_gpu_compiled.* "$OUT"/ 2>/dev/null
fi
