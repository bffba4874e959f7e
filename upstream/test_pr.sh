#!/usr/bin/env bash
# Runs tests of a pytorch/rl checkout the series was laid into, against an installed torchrl plus the series.
#
#   bash upstream/test_pr.sh PATH_TO_PYTORCH_RL BASE PYTHON [pytest args...]
#   bash upstream/test_pr.sh PATH_TO_PYTORCH_RL BASE PYTHON --run "COMMAND"   # a shell command instead
#
# BASE is the pytorch/rl commit the series starts from, PYTHON the interpreter of a venv with torch,
# torchrl, tensordict and pytest. Building TorchRL from the checkout needs its C++ extension; instead
# the installed torchrl package is copied to a temporary folder and the checkout's changes since BASE
# are applied to the copy (new files copied, changed files patched). pytest then runs in the checkout
# on that copy; `python -P` keeps the checkout's unbuilt torchrl/ off sys.path, and PYTHON's folder
# goes first on PATH so that the `python` of test_sota.py's commands is PYTHON.
set -euo pipefail
dest=$(cd "${1:?give the pytorch/rl checkout}" && pwd)
base=${2:?give the pytorch/rl commit the series starts from}
python=${3:?give the python of a venv with torch, torchrl, tensordict and pytest}
shift 3
installed=$("$python" -P -c "import torchrl, os; print(os.path.dirname(torchrl.__file__))")
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
cp -r "$installed" "$overlay/torchrl"
cd "$dest"
git diff "$base" --diff-filter=M -- torchrl | patch -s -p1 -d "$overlay"
{ git diff "$base" --name-only --diff-filter=A -- torchrl; git ls-files --others --exclude-standard torchrl; } |
    while read -r file; do
        mkdir -p "$overlay/$(dirname "$file")" && cp "$file" "$overlay/$file"
    done
version=$("$python" -P -c 'import torchrl; print(torchrl.__version__)')
echo "torchrl $version from $installed, with the checkout's changes since ${base:0:9}"
export PYTHONPATH="$overlay" PATH="$(dirname "$python"):$PATH"
if [ "${1:-}" = "--run" ]; then
    echo "+ ${2:?give the command to run}"
    bash -c "$2"
else
    "$python" -P -m pytest -p no:cacheprovider -q "$@"
fi
