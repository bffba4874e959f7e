"""Lays the MISA pull request out in a pytorch/rl checkout.

    python upstream/make_pr.py PATH_TO_PYTORCH_RL          # write the files
    python upstream/make_pr.py PATH_TO_PYTORCH_RL --dry-run

Every file of the package that goes upstream is written at TorchRL's path, with
TorchRL's licence header, ``from __future__ import annotations`` and imports
rewritten from ``torchrl_misa`` to ``torchrl``. Files of the checkout that list
TorchRL's components (``torchrl/objectives/__init__.py``, the docs' reference
pages, the SOTA smoke tests, the README) get one entry each; an entry already
there is left alone, so running the command twice changes nothing. In a folder
that is not a pytorch/rl checkout (no such files), only the new files are
written and the skipped edits are listed.

The command prints what it wrote and every line of a laid-out file that still
imports ``torchrl_misa`` (code that has no TorchRL home yet).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEADER = (
    "# Copyright (c) Meta Platforms, Inc. and affiliates.\n"
    "#\n"
    "# This source code is licensed under the MIT license found in the\n"
    "# LICENSE file in the root directory of this source tree.\n"
)

# (source folder or file in this repo, destination in pytorch/rl, file renames)
PACKAGE_FILES = [
    ("torchrl_misa/objectives", "torchrl/objectives", {}),
    ("torchrl_misa/mcmc", "torchrl/modules/mcmc", {}),
]
TEST_FILES = {
    "test/test_misa_torchrl.py": "test/objectives/test_misa.py",
    "test/test_misa_loss.py": "test/objectives/test_misa_loss.py",
    "test/test_misa_variants.py": "test/objectives/test_misa_variants.py",
    "test/test_misa_sampling.py": "test/objectives/test_misa_sampling.py",
}
TEST_GLOBS = {"test/test_mcmc*.py": "test/modules"}
RECIPE = ("sota-implementations/misa", "sota-implementations/misa")

# Longest first: a module path is rewritten before its package.
IMPORT_REWRITES = [
    (
        r"\bfrom torchrl_misa import MISALoss\b",
        "from torchrl.objectives import MISALoss",
    ),
    (r"\bfrom torchrl_misa import mcmc\b", "from torchrl.modules import mcmc"),
    (r"\bimport torchrl_misa\.mcmc as\b", "import torchrl.modules.mcmc as"),
    (r"\btorchrl_misa\.objectives\b", "torchrl.objectives"),
    (r"\btorchrl_misa\.mcmc\b", "torchrl.modules.mcmc"),
]

SOTA_COMMAND = '''    "misa_offline": """python sota-implementations/misa/misa_offline.py \\
  optim.gradient_steps=55 \\
  replay_buffer.batch_size=16 \\
  loss.num_mcmc_samples=4 \\
  logger.eval_iter=50 \\
  logger.eval_envs=2 \\
  logger.backend=
""",
'''

SOTA_CHECK = """#!/bin/bash

#SBATCH --job-name=misa_offline
#SBATCH --ntasks=32
#SBATCH --cpus-per-task=1
#SBATCH --gres=gpu:1
#SBATCH --output=slurm_logs/misa_offline_%j.txt
#SBATCH --error=slurm_errors/misa_offline_%j.txt

current_commit=$(git rev-parse --short HEAD)
project_name="torchrl-example-check-$current_commit"
group_name="misa_offline"
export PYTHONPATH=$(dirname $(dirname $PWD))
python $PYTHONPATH/sota-implementations/misa/misa_offline.py \\
  logger.backend=wandb \\
  logger.project_name="$project_name" \\
  logger.group_name="$group_name"

# Capture the exit status of the Python command
exit_status=$?
# Write the exit status to a file
if [ $exit_status -eq 0 ]; then
  echo "${group_name}_${SLURM_JOB_ID}=success" >> report.log
else
  echo "${group_name}_${SLURM_JOB_ID}=error" >> report.log
fi
"""

MCMC_DOC = """.. currentmodule:: torchrl.modules.mcmc

torchrl.modules.mcmc package
============================

Batched Hamiltonian Monte Carlo over tensors: every chain of every batch
element advances as one tensor program. The kernel is built from parts (an
integrator, a diagonal preconditioner, a divergence threshold) and the step
size is adapted during burn-in, as in BlackJAX. :class:`~torchrl.objectives.MISALoss`
uses it to sample ``p(a|s) ∝ pi(a|s) exp Q(s, a)``.

.. autosummary::
   :toctree: generated/

{entries}
"""


@dataclass
class Layout:
    """What one run wrote, edited, skipped and left importing the side package."""

    written: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    skipped_edits: list[str] = field(default_factory=list)
    leftover_imports: list[str] = field(default_factory=list)


def to_torchrl(source: str) -> str:
    """Rewrites a file of this package for TorchRL: header, future import, imports."""
    for pattern, repl in IMPORT_REWRITES:
        source = re.sub(pattern, repl, source)
    if "from __future__ import annotations" not in source:
        source = _insert_future_import(source)
    if not source.startswith(HEADER):
        source = HEADER + ("\n" if not source.startswith('"""') else "") + source
    return source


def _insert_future_import(source: str) -> str:
    # After the module docstring (it must stay first), before any other code.
    match = re.match(r'(\s*"""(?:.|\n)*?"""\n)', source)
    head, tail = (match.group(1), source[match.end() :]) if match else ("", source)
    return head + ("\n" if head else "") + "from __future__ import annotations\n" + tail


def planned_files(repo: Path = REPO) -> dict[str, Path]:
    """Destination path in pytorch/rl -> source file here, for every new file."""
    plan: dict[str, Path] = {}
    for src, dst, renames in PACKAGE_FILES:
        for path in sorted((repo / src).glob("*.py")):
            if src.endswith("objectives") and path.name == "__init__.py":
                continue  # exported through TorchRL's own __init__
            plan[f"{dst}/{renames.get(path.name, path.name)}"] = path
    for src, dst in TEST_FILES.items():
        if (repo / src).exists():
            plan[dst] = repo / src
    for pattern, dst in TEST_GLOBS.items():
        for path in sorted(repo.glob(pattern)):
            plan[f"{dst}/{path.name}"] = path
    src, dst = RECIPE
    for path in sorted((repo / src).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            plan[f"{dst}/{path.relative_to(repo / src).as_posix()}"] = path
    return plan


def _edit(target: Path, rel: str, edit, layout: Layout) -> None:
    if not target.exists():
        layout.skipped_edits.append(rel)
        return
    text = target.read_text()
    new = edit(text)
    if new != text:
        target.write_text(new)
        layout.edited.append(rel)


def _export_misa_loss(text: str) -> str:
    line = "from torchrl.objectives.misa import MISALoss\n"
    if line in text:
        return text
    imports = list(
        re.finditer(r"^from torchrl\.objectives\.(\w+) import .*?\n", text, re.M | re.S)
    )
    after = [m for m in imports if m.group(1) < "misa"]
    pos = after[-1].end() if after else (imports[0].start() if imports else 0)
    text = text[:pos] + line + text[pos:]
    # __all__: before the first name that sorts after it.
    entries = re.search(r"__all__ = \[\n(.*?)\]", text, re.S)
    if entries and '"MISALoss"' not in entries.group(1):
        names = re.findall(r'^\s*"(\w+)",\n', entries.group(1), re.M)
        later = [n for n in names if n > "MISALoss"]
        anchor = f'    "{later[0]}",\n' if later else None
        body = entries.group(1)
        body = (
            body.replace(anchor, f'    "MISALoss",\n{anchor}', 1)
            if anchor
            else body + '    "MISALoss",\n'
        )
        text = text[: entries.start(1)] + body + text[entries.end(1) :]
    return text


def _offline_docs(text: str) -> str:
    if "    MISALoss\n" in text:
        return text
    return text.rstrip("\n") + "\n    MISALoss\n"


def _modules_toctree(text: str) -> str:
    if "   modules_mcmc\n" in text:
        return text
    return text.replace("   modules_mcts\n", "   modules_mcts\n   modules_mcmc\n", 1)


def _sota_commands(text: str) -> str:
    if '"misa_offline"' in text:
        return text
    pos = text.find("\n}\n", text.find("commands = {"))
    return text[: pos + 1] + SOTA_COMMAND + text[pos + 1 :]


def _readme(text: str) -> str:
    if "IQL, CQL, MISA," in text:
        return text
    return text.replace("IQL, CQL,", "IQL, CQL, MISA,", 1)


def mcmc_exports(repo: Path = REPO) -> list[str]:
    """Public names of the sampler package (its ``__all__``)."""
    text = (repo / "torchrl_misa" / "mcmc" / "__init__.py").read_text()
    match = re.search(r"__all__ = \[(.*?)\]", text, re.S)
    return re.findall(r'"(\w+)"', match.group(1)) if match else []


def lay_out(dest: Path, repo: Path = REPO, dry_run: bool = False) -> Layout:
    """Writes the pull request's files into ``dest`` (a pytorch/rl checkout)."""
    layout = Layout()
    new_files: dict[str, str] = {}
    for rel, src in planned_files(repo).items():
        text = src.read_text() if src.suffix in (".py", ".yaml", ".md", ".sh") else None
        if text is None:
            continue
        if src.suffix == ".py":
            text = to_torchrl(text)
        new_files[rel] = text
    new_files["sota-check/run_misa_offline.sh"] = SOTA_CHECK
    entries = "\n".join(f"   {name}" for name in mcmc_exports(repo))
    new_files["docs/source/reference/modules_mcmc.rst"] = MCMC_DOC.format(
        entries=entries
    )

    for rel, text in new_files.items():
        for number, line in enumerate(text.splitlines(), 1):
            if rel.endswith(".py") and re.match(
                r"\s*(from|import) torchrl_misa\b", line
            ):
                layout.leftover_imports.append(f"{rel}:{number}: {line.strip()}")
        layout.written.append(rel)
        if not dry_run:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    if dry_run:
        return layout
    edits = {
        "torchrl/objectives/__init__.py": _export_misa_loss,
        "docs/source/reference/objectives_offline.rst": _offline_docs,
        "docs/source/reference/modules.rst": _modules_toctree,
        ".github/unittest/linux_sota/scripts/test_sota.py": _sota_commands,
        "README.md": _readme,
    }
    for rel, edit in edits.items():
        _edit(dest / rel, rel, edit, layout)
    return layout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dest", type=Path, help="a pytorch/rl checkout (or an empty folder)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list, write nothing")
    args = parser.parse_args(argv)
    if args.dest.exists() and not args.dest.is_dir():
        parser.error(
            f"{args.dest} is not a folder: give the root of a pytorch/rl checkout."
        )
    layout = lay_out(args.dest, dry_run=args.dry_run)
    print(
        f"{'would write' if args.dry_run else 'wrote'} {len(layout.written)} files under {args.dest}"
    )
    for rel in layout.written:
        print(f"  + {rel}")
    for rel in layout.edited:
        print(f"  ~ {rel}")
    for rel in layout.skipped_edits:
        print(f"  skipped (not in this folder): {rel}")
    if layout.leftover_imports:
        print("still importing torchrl_misa (no TorchRL home yet):")
        for line in layout.leftover_imports:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
