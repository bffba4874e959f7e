#!/usr/bin/env bash
# Applies the series to a clean pytorch/rl checkout one PR at a time and, after each, runs TorchRL's
# pre-commit checks on its files (lint_pr.sh) and its tests (test_pr.sh), then commits it with its
# title and description, so that the next PR is checked on its own files. After PR 4 it runs the
# recipe's test_sota.py command on this repo's demo file (that entry downloads D4RL data), then
# the same with two agents and an online phase.
#
#   bash upstream/check_series.sh PATH_TO_PYTORCH_RL [PYTHON] [LINT_BIN]
#
# PYTHON: a venv without torchrl_misa (default: /tmp/misa-pure-venv, made here from this repo's
# .venv: its packages, but not the editable torchrl_misa). LINT_BIN: the tools of
# upstream/lint-requirements.txt (default /tmp/lint/bin). Stops at the first PR that make_pr.py
# refuses to lay out (its message says why). The exit status is the number of PRs that failed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=$(cd "${1:?give a clean pytorch/rl checkout}" && pwd)
python=${2:-}
bin=${3:-/tmp/lint/bin}
if [ -z "$python" ]; then
    pure=/tmp/misa-pure-venv
    [ -x "$pure/bin/python" ] || "$here/.venv/bin/python" -m venv --without-pip "$pure"
    purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
    purelib "$here/.venv/bin/python" >"$(purelib "$pure/bin/python")/misa_deps.pth"
    python=$pure/bin/python
fi
if (cd / && "$python" -P -c "import torchrl_misa" 2>/dev/null); then
    echo "$python imports torchrl_misa: give a venv without it" >&2
    exit 2
fi
if [ -n "$(git -C "$dest" status --porcelain)" ]; then
    echo "$dest has uncommitted changes: give a clean checkout" >&2
    exit 2
fi
base=$(git -C "$dest" rev-parse HEAD)
failed=0
for n in 1 2 3 4; do
    echo "=== PR $n: $(python3 "$here/upstream/make_pr.py" --message "$n" | head -1)"
    if ! python3 "$here/upstream/make_pr.py" "$dest" --pr "$n" --ufmt "$bin/ufmt"; then
        failed=$((failed + 1))
        break
    fi
    (cd "$dest" && git add -A . && git diff --cached --shortstat)
    (cd "$dest" && git reset -q)
    bash "$here/upstream/lint_pr.sh" "$dest" "$bin" || failed=$((failed + 1))
    mapfile -t tests < <(python3 "$here/upstream/make_pr.py" --tests "$n")
    if [ "$n" = 4 ]; then
        # test_sota.py's command downloads D4RL's halfcheetah-medium-v2: without network the
        # same command runs on this repo's D4RL-format demo file, through PR 1's d4rl_file prefix
        smoke="$(python3 "$here/upstream/make_pr.py" --smoke) replay_buffer.dataset=d4rl_file:$here/datasets/pendulum-medium-replay-v0.hdf5"
        # and two agents fine-tuned online: the helpers of agent_group.py and offline_data.py
        online="$smoke num_agents=2 online.frames=200 online.frames_per_batch=100 hydra.run.dir=$(mktemp -d)"
        tests=(--run "$smoke && $online")
    fi
    bash "$here/upstream/test_pr.sh" "$dest" "$base" "$python" "${tests[@]}" || failed=$((failed + 1))
    (cd "$dest" && git add -A . && python3 "$here/upstream/make_pr.py" --message "$n" |
        git -c user.name=check_series -c user.email=check@series commit -q -F -)
done
echo "$failed PR(s) failed"
exit "$failed"
