#!/usr/bin/env bash
# Runs the MISA tests laid out by make_pr.py inside a pytorch/rl checkout, against an installed torchrl.
#
#   bash upstream/test_pr.sh PATH_TO_PYTORCH_RL [PYTHON] [pytest args...]
#
# Building TorchRL from the checkout needs its C++ extension; instead, the
# installed torchrl package (PYTHON's, default this repo's .venv) is copied to a
# temporary folder, the laid-out torchrl/objectives/misa.py, its helper modules
# and torchrl/modules/mcmc/ are added to the copy, MISALoss is exported from its
# torchrl.objectives, and pytest runs the checkout's test files on that copy.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=$(cd "${1:?give the pytorch/rl checkout make_pr.py wrote into}" && pwd)
python=${2:-$here/.venv/bin/python}
shift $(($# < 2 ? $# : 2))
installed=$("$python" -c "import torchrl, os; print(os.path.dirname(torchrl.__file__))")
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
cp -r "$installed" "$overlay/torchrl"
cp "$dest"/torchrl/objectives/misa.py "$dest"/torchrl/objectives/_misa_*.py "$overlay/torchrl/objectives/" 2>/dev/null ||
    cp "$dest"/torchrl/objectives/misa.py "$overlay/torchrl/objectives/"
rm -rf "$overlay/torchrl/modules/mcmc"
cp -r "$dest/torchrl/modules/mcmc" "$overlay/torchrl/modules/mcmc"
echo "from torchrl.objectives.misa import MISALoss  # noqa: F401" >>"$overlay/torchrl/objectives/__init__.py"
version=$("$python" -c 'import torchrl; print(torchrl.__version__)')
cd "$dest"
tests=(test/objectives/test_misa*.py test/modules/test_mcmc*.py)
echo "torchrl $version from $installed, with the laid-out MISA files"
# The pytest script, not `python -m pytest`: the latter puts the checkout (and its
# unbuilt torchrl/) first on sys.path.
PYTHONPATH="$overlay" "$(dirname "$python")/pytest" -p no:cacheprovider -q "${tests[@]}" "$@"
