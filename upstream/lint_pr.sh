#!/usr/bin/env bash
# Runs TorchRL's pre-commit checks on the files changed in a pytorch/rl checkout since its last commit
# (one PR of the series, when upstream/check_series.sh runs it).
#
#   bash upstream/lint_pr.sh PATH_TO_PYTORCH_RL [TOOLS_BIN]
#
# pre-commit itself clones its hooks from GitHub; this runs the same tools at the versions pinned in
# TorchRL's .pre-commit-config.yaml (upstream/lint-requirements.txt), installed once with
#   python3 -m venv /tmp/lint && /tmp/lint/bin/pip install -r upstream/lint-requirements.txt
# Nothing is changed: make_pr.py already formats what it writes, and the hooks that rewrite files
# (pyupgrade) run on copies. The exit status is the number of checks that failed.
set -uo pipefail
dest=$(cd "${1:?give the pytorch/rl checkout}" && pwd)
bin=${2:-/tmp/lint/bin}
cd "$dest"
mapfile -t all < <({ git diff --name-only --diff-filter=AM HEAD; git ls-files --others --exclude-standard; } | sort -u)
mapfile -t py < <(printf '%s\n' "${all[@]}" | grep '\.py$')
mapfile -t lib < <(printf '%s\n' "${py[@]}" | grep '^torchrl/')
mapfile -t rst < <(printf '%s\n' "${all[@]}" | grep '^docs/.*\.rst$')
mapfile -t yaml < <(printf '%s\n' "${all[@]}" | grep -E '\.ya?ml$')
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
endings() { # end-of-file-fixer and mixed-line-ending, as checks
    "$bin/python" - "$@" <<'PY'
import sys
bad = [f for f in sys.argv[1:] if (t := open(f, "rb").read()) and (not t.endswith(b"\n") or t.endswith(b"\n\n") or b"\r" in t)]
print("\n".join(bad))
sys.exit(bool(bad))
PY
}
rewrites() { # pyupgrade rewrites files: run it on copies
    local tmp
    tmp=$(mktemp -d)
    cp --parents "$@" "$tmp" && (cd "$tmp" && "$bin/pyupgrade" --py311-plus "$@")
    local status=$?
    rm -rf "$tmp"
    return $status
}
echo "${#all[@]} files changed: ${#py[@]} Python, ${#rst[@]} docs, ${#yaml[@]} YAML"
check "ufmt (black 22.3.0, usort 1.0.3)" "$bin/ufmt" check "${py[@]}"
check "flake8 6.1.0 + bugbear, comprehensions, print (setup.cfg)" "$bin/flake8" --config=setup.cfg "${py[@]}"
check "check-docstring-first" "$bin/check-docstring-first" "${py[@]}"
check "end-of-file, mixed-line-ending" endings "${all[@]}"
[ ${#yaml[@]} -gt 0 ] && check "check-yaml" "$bin/check-yaml" "${yaml[@]}"
[ ${#lib[@]} -gt 0 ] && check "pydocstyle (torchrl/)" "$bin/pydocstyle" "${lib[@]}"
check "pyupgrade --py311-plus" rewrites "${py[@]}"
check "codespell" "$bin/codespell" "${all[@]}"
check "autoflake (unused imports and variables)" "$bin/autoflake" --check --remove-unused-variables --remove-all-unused-imports "${py[@]}"
[ ${#lib[@]} -gt 0 ] && check "check-docstring-args (torchrl/)" "$bin/python" scripts/check-docstring-args "${lib[@]}"
[ ${#rst[@]} -gt 0 ] && check "check-sphinx-section-underline" "$bin/python" scripts/check-sphinx-section-underline "${rst[@]}"
echo "$failed check(s) failed"
exit "$failed"
