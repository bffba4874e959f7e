#!/usr/bin/env bash
# Runs TorchRL's pre-commit checks on the files make_pr.py laid out in a pytorch/rl checkout.
#
#   bash upstream/lint_pr.sh PATH_TO_PYTORCH_RL [TOOLS_BIN]
#
# pre-commit itself clones its hooks from GitHub; this runs the same tools at the
# versions pinned in TorchRL's .pre-commit-config.yaml, installed once with:
#   python -m venv /tmp/lint && /tmp/lint/bin/pip install "black==22.3.0" "usort==1.0.3" \
#     "libcst==1.0.1" "ufmt==2.8.0" "flake8==6.1.0" "flake8-bugbear==22.10.27" \
#     "flake8-comprehensions==3.10.1" "flake8-print==4.0.1" "pydocstyle==6.3.0" \
#     "pyupgrade==3.20.0" "codespell==2.4.1" tomli autoflake
# ufmt is applied (as the hook does on commit), then every check runs; the exit
# status is the number of checks that failed.
set -uo pipefail
dest=$(cd "${1:?give the pytorch/rl checkout}" && pwd)
bin=${2:-/tmp/lint/bin}
cd "$dest"
mapfile -t py < <(git status --porcelain --untracked-files=all | awk '{print $2}' | grep '\.py$')
mapfile -t lib < <(printf '%s\n' "${py[@]}" | grep '^torchrl/')
mapfile -t rst < <(git status --porcelain --untracked-files=all | awk '{print $2}' | grep '\.rst$')
failed=0
check() {
    local name=$1
    shift
    if out=$("$@" 2>&1); then
        echo "pass  $name"
    else
        echo "FAIL  $name"
        echo "$out" | sed 's/^/      /' | head -40
        failed=$((failed + 1))
    fi
}
"$bin/ufmt" format "${py[@]}" >/dev/null 2>&1
check "ufmt (black 22.3.0, usort 1.0.3)" "$bin/ufmt" check "${py[@]}"
check "flake8 6.1.0 + bugbear, comprehensions, print" "$bin/flake8" --config=setup.cfg "${py[@]}"
check "pydocstyle (torchrl/)" "$bin/pydocstyle" "${lib[@]}"
check "pyupgrade --py311-plus" "$bin/pyupgrade" --py311-plus "${py[@]}"
check "codespell" "$bin/codespell" "${py[@]}" "${rst[@]}"
check "autoflake (unused imports and variables)" "$bin/autoflake" --check --remove-unused-variables --remove-all-unused-imports "${py[@]}"
check "check-docstring-args (torchrl/)" python3 scripts/check-docstring-args "${lib[@]}"
check "check-sphinx-section-underline" python3 scripts/check-sphinx-section-underline "${rst[@]}"
echo "$failed check(s) failed on ${#py[@]} Python files"
exit "$failed"
