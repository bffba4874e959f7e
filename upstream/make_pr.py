"""Lays the MISA work out in a pytorch/rl checkout as a series of four pull requests.

    python upstream/make_pr.py PATH_TO_PYTORCH_RL            # PRs 1 to 4, in order
    python upstream/make_pr.py PATH_TO_PYTORCH_RL --pr 2     # PR 2 only (on top of 1)
    python upstream/make_pr.py --list                        # which file goes where
    python upstream/make_pr.py --tests 2 / --message 2       # PR 2's tests / text

Each PR applies on top of pytorch/rl main plus the PRs before it (``SERIES``
below is the table of which file goes in which PR), has its own description
(``upstream/PR<n>_<name>.md``) and its own tests:

1. ``datasets``: the D4RL and Minari fixes, as a patch of TorchRL's own
   ``torchrl/data/datasets`` files and ``test/libs/test_datasets.py``
   (``upstream/pr1_datasets.patch``, applied with ``git apply``; to change it,
   apply it to a checkout, edit there and write ``git diff`` back), calling
   helpers that are this package's own functions (``FIXES``), copied in as
   private functions of TorchRL's modules: one text for both;
2. ``mcmc``: ``torchrl/modules/mcmc`` (this repo's ``torchrl_misa/mcmc``) and
   its tests, merged into one file;
3. ``misa_loss``: ``MISALoss`` and its helpers, ``TestMISA`` and the other
   loss tests in one file, the docs entry;
4. ``recipe``: ``sota-implementations/misa``, its ``sota-check`` script and
   its ``test_sota.py`` entry. The package's helpers it uses are merged into
   two modules of its folder (``offline_data.py`` from ``torchrl_misa/data``,
   ``agent_group.py`` from ``torchrl_misa/agents``), their data loaded through
   TorchRL's own dataset classes. A recipe file that still imports anything
   else TorchRL lacks stops the layout: the command names each such name and
   stops there (exit status 1).

Files of this package are written at TorchRL's paths with TorchRL's licence
header, ``from __future__ import annotations`` and ``torchrl_misa`` rewritten
to ``torchrl``; files that list TorchRL's components get one entry each (an
entry already there is left alone, so a second run changes nothing). The
Python files a PR writes or edits are then formatted with ufmt (black and
usort at TorchRL's pinned versions, ``--ufmt``, found on ``PATH`` or in
``/tmp/lint/bin`` by default), so that ``lint_pr.sh`` only checks. In a folder
that is not a pytorch/rl checkout, only the new files are written and the
patch and edits are listed as skipped.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

HEADER = (
    "# Copyright (c) Meta Platforms, Inc. and affiliates.\n"
    "#\n"
    "# This source code is licensed under the MIT license found in the\n"
    "# LICENSE file in the root directory of this source tree.\n"
)

# Longest first: a module path is rewritten before its package.
REWRITES = [
    (
        r"\bfrom torchrl_misa import MISALoss\b",
        "from torchrl.objectives import MISALoss",
    ),
    (r"\bfrom torchrl_misa import mcmc\b", "from torchrl.modules import mcmc"),
    (r"\bimport torchrl_misa\.mcmc as\b", "import torchrl.modules.mcmc as"),
    (r"\btorchrl_misa\.objectives\b", "torchrl.objectives"),
    (r"\btorchrl_misa\.mcmc\b", "torchrl.modules.mcmc"),
    (r"\btorchrl_misa\.MISALoss\b", "torchrl.objectives.MISALoss"),
]


@dataclass
class Merge:
    """Test files of this repo merged into one TorchRL test file.

    Imports are pooled, a later file's top-level name that an earlier file
    already defines is dropped when its code is the same and renamed (with the
    file's tag) when not; ``drop`` removes top-level definitions, ``replace``
    rewrites text before the imports are rewritten (each ``old`` must occur),
    ``imports`` are added. Imports of one merged file by another, at the top or
    inside a function, are dropped: the names are the merged file's own.
    """

    sources: list[str]
    docstring: str
    drop: dict[str, list[str]] = field(default_factory=dict)
    replace: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)
    #: a test file (run by pytest when executed) or a plain module
    test: bool = True


@dataclass
class PR:
    number: int
    name: str
    title: str
    files: dict[str, str | Merge | Callable[[], str]] = field(default_factory=dict)
    edits: dict[str, Callable[[str], str]] = field(default_factory=dict)
    patch: str | None = None
    tests: list[str] = field(default_factory=list)
    #: (pattern, replacement) applied to this PR's files before ``REWRITES``
    rewrites: list[tuple[str, str]] = field(default_factory=list)

    @property
    def description(self) -> Path:
        return HERE / f"PR{self.number}_{self.name}.md"


MCMC_TESTS = Merge(
    sources=[
        "test/test_mcmc.py",
        "test/test_mcmc_parts.py",
        "test/test_mcmc_driver.py",
        "test/test_mcmc_positions.py",
        "test/test_mcmc_validate.py",
        "test/test_mcmc_hardening.py",
        "test/test_mcmc_compile.py",
    ],
    docstring="""Tests of torchrl.modules.mcmc.

The sampler against analytic distributions, its parts, a chain-by-chain
float64 reference, TensorDict positions, input checks, hard targets and the
compiled transition.
""",
)

MISA_TESTS = Merge(
    sources=[
        "test/test_misa_torchrl.py",
        "test/test_misa_loss.py",
        "test/test_misa_variants.py",
        "test/test_misa_sampling.py",
    ],
    docstring="""Tests of MISALoss.

TestMISA runs TorchRL's per-loss checks; the functions after it recompute
every loss entry, variant and gradient in float64, and check the correction's
samples against the tilted policy.
""",
    drop={"test/test_misa_torchrl.py": ["DEVICES", "_check_td_steady"]},
    replace={
        "test/test_misa_torchrl.py": [
            ("class TestMISA:", "class TestMISA(LossModuleTestBase):"),
            ('"device", DEVICES)', '"device", get_default_devices())'),
        ],
        "test/test_misa_variants.py": [
            ("in ``test_misa_loss.reference``", "by ``reference``"),
        ],
    },
    imports=[
        "from _objectives_common import _check_td_steady, LossModuleTestBase",
        "from torchrl.testing import get_default_devices",
    ],
)

# The recipe's helpers that this package keeps for its users, laid out next to
# the recipe as two modules of its own (the recipe imports them by name, as
# TorchRL's recipes import their utils.py).
AGENT_GROUP = Merge(
    sources=["torchrl_misa/agents/compat.py", "torchrl_misa/agents/group.py"],
    docstring="""Many independent agents of one loss module, trained in one process.

AgentGroup stacks the agents' parameters and runs the loss once per agent
under torch.vmap; the functions before it let TorchRL's losses run there.
""",
    test=False,
)

_DATA = "torchrl_misa/data/"
_OFFLINE = _DATA + "offline_data.py"
OFFLINE_DATA = Merge(
    sources=[
        _DATA + name + ".py"
        for name in (
            "errors",
            "h5read",
            "tasks",
            "fingerprint",
            "processing",
            "scores",
            "envs",
            "offline_data",
            "online_buffer",
        )
    ],
    docstring="""Offline datasets for the MISA recipe: names to processed replay buffers.

load_offline_data turns a dataset name (a D4RL id, "minari:<id>", a local
D4RL-format file) into an OfflineData: TorchRL's dataset class as a replay
buffer, MISA's processing in its transforms, and what evaluation and D4RL's
normalised scores need. GroupOfflineToOnlineReplayBuffer mixes it with online
transitions, one buffer per agent, for fine-tuning online.
""",
    # TorchRL's classes (with PR 1) instead of this package's fixed ones, which
    # alone raise these errors
    drop={
        _DATA
        + "errors.py": [
            "DatasetUnavailableError",
            "CacheDamagedError",
            "CacheWriteError",
        ]
    },
    replace={
        _OFFLINE: [
            ("        DatasetUnavailableError: not cached and no network.\n", ""),
            (
                "from torchrl.data.datasets import load_dataset\n",
                "from torchrl.data.datasets import (\n    D4RLExperienceReplay,\n"
                "    D4RLFileExperienceReplay,\n    load_dataset,\n"
                "    MinariExperienceReplay,\n)\n",
            ),
            (
                "from torchrl_misa.data.d4rl import D4RLFileExperienceReplay, "
                "OfflineD4RLExperienceReplay\n",
                "",
            ),
            ("from torchrl_misa.data.minari_data import load_minari\n", ""),
            (
                "    :class:`~torchrl_misa.data.OfflineD4RLExperienceReplay`),\n"
                '    ``"minari:<id>"`` (:func:`~torchrl_misa.data.minari_data.load_minari`),\n'
                '    ``"d4rl_file:<path>"`` or a path ending in ``.hdf5``\n'
                "    (:class:`~torchrl_misa.data.D4RLFileExperienceReplay`).",
                "    :class:`~torchrl.data.datasets.D4RLExperienceReplay`),\n"
                '    ``"minari:<id>"`` (:class:`~torchrl.data.datasets.MinariExperienceReplay`),\n'
                '    ``"d4rl_file:<path>"`` or a path ending in ``.hdf5``\n'
                "    (:class:`~torchrl.data.datasets.D4RLFileExperienceReplay`).",
            ),
            (
                "load_minari(name, batch_size, **common)",
                "MinariExperienceReplay(name, batch_size, **common)",
            ),
            (
                "OfflineD4RLExperienceReplay(name, batch_size, **common)",
                "D4RLExperienceReplay(name, batch_size, direct_download=True, **common)",
            ),
        ],
    },
    test=False,
)

# References to this package in the recipe's files, for the layout: its data
# and agent helpers are the recipe's own modules there.
_DATA_MODULES = "|".join(
    sorted(p.stem for p in (REPO / "torchrl_misa" / "data").rglob("*.py"))
)
RECIPE_REWRITES = [
    (rf"\btorchrl_misa\.data(?:\.(?:{_DATA_MODULES}))*\b", "offline_data"),
    (r"\btorchrl_misa\.agents(?:\.(?:compat|group))?\b", "agent_group"),
    (r"\bproject_name: torchrl_misa\b", "project_name: torchrl_example_misa"),
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


def smoke_command() -> str:
    """The recipe's command in ``test_sota.py`` (``SOTA_COMMAND``), on one line."""
    body = SOTA_COMMAND.split('"""')[1]
    return " ".join(body.replace("\\\n", " ").split())


def mcmc_exports(repo: Path = REPO) -> list[str]:
    """Public names of the sampler package (its ``__all__``)."""
    text = (repo / "torchrl_misa" / "mcmc" / "__init__.py").read_text()
    match = re.search(r"__all__ = \[(.*?)\]", text, re.S)
    return re.findall(r'"(\w+)"', match.group(1)) if match else []


def _mcmc_doc() -> str:
    """The reference page: ``upstream/files/docs/modules_mcmc.rst`` with the exports."""
    text = (HERE / "files" / "docs" / "modules_mcmc.rst").read_text()
    return text.format(entries="\n".join(f"   {n}" for n in mcmc_exports()))


def _modules_toctree(text: str) -> str:
    if "   modules_mcmc\n" in text:
        return text
    return text.replace("   modules_mcts\n", "   modules_mcts\n   modules_mcmc\n", 1)


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


def _sota_commands(text: str) -> str:
    if '"misa_offline"' in text:
        return text
    pos = text.find("\n}\n", text.find("commands = {"))
    return text[: pos + 1] + SOTA_COMMAND + text[pos + 1 :]


def _readme(text: str) -> str:
    if "IQL, CQL, MISA," in text:
        return text
    return text.replace("IQL, CQL,", "IQL, CQL, MISA,", 1)


# PR 1's helpers: functions of this package, copied in as private functions of
# TorchRL's modules (before the anchor). The package applies the same functions
# to today's TorchRL classes.
FIXES = {
    "torchrl/data/datasets/d4rl.py": (
        "torchrl_misa/data/d4rl.py",
        ["repeat_last_row", "unknown_next_observation"],
        "\n\ndef _download_dataset_from_url(",
    ),
    "torchrl/data/datasets/utils.py": (
        "torchrl_misa/data/cache.py",
        [
            "partial_folder",
            "remove_stale_partials",
            "discard",
            "replace_folder",
            "memmap_atomic",
        ],
        "\n\ndef _normalize_prefix(",
    ),
}


def package_functions(module: str, names: list[str], repo: Path = REPO) -> str:
    """Top-level functions ``names`` of a package module, renamed ``_<name>``.

    Every mention of a name is renamed (calls, docstrings, examples); the
    functions must use only what the TorchRL module imports.
    """
    text = (repo / module).read_text()
    nodes = {
        node.name: node
        for node in ast.parse(text).body
        if isinstance(node, ast.FunctionDef)
    }
    missing = [n for n in names if n not in nodes]
    if missing:
        raise KeyError(f"{module} has no top-level function {missing}")
    out = "\n\n\n".join(ast.get_source_segment(text, nodes[n]) for n in names)
    for name in names:
        out = re.sub(rf"(?<![\w.]){name}\b", f"_{name}", out)
    return out


def _insert_fixes(rel: str) -> Callable[[str], str]:
    module, names, anchor = FIXES[rel]

    def edit(text: str, repo: Path = REPO) -> str:
        if f"def _{names[0]}(" in text:
            return text
        pos = text.index(anchor)
        return (
            text[:pos]
            + "\n\n"
            + package_functions(module, names, repo)
            + "\n"
            + text[pos:]
        )

    return edit


# The series: which file goes in which pull request. A destination ending in
# "/" takes every file of the source folder.
SERIES = [
    PR(
        1,
        "datasets",
        "[BugFix] D4RL and Minari conversions: the last transition, next states "
        "at time limits, Minari's data, caches written all or nothing",
        patch="pr1_datasets.patch",
        edits={rel: _insert_fixes(rel) for rel in FIXES},
        tests=[
            "test/libs/test_datasets.py",
            "-k",
            "TestD4RLConversion or first_conversion",
            "--runslow",  # TestMinari is marked slow
        ],
    ),
    PR(
        2,
        "mcmc",
        "[Feature] torchrl.modules.mcmc: batched Hamiltonian Monte Carlo",
        files={
            "torchrl/modules/mcmc/": "torchrl_misa/mcmc/",
            "test/modules/test_mcmc.py": MCMC_TESTS,
            "docs/source/reference/modules_mcmc.rst": _mcmc_doc,
        },
        edits={"docs/source/reference/modules.rst": _modules_toctree},
        tests=["test/modules/test_mcmc.py"],
    ),
    PR(
        3,
        "misa_loss",
        "[Algorithm] MISALoss: mutual information regularised offline RL",
        files={
            "torchrl/objectives/misa.py": "torchrl_misa/objectives/misa.py",
            "torchrl/objectives/_misa_bounds.py": "torchrl_misa/objectives/_misa_bounds.py",
            "torchrl/objectives/_misa_checks.py": "torchrl_misa/objectives/_misa_checks.py",
            "test/objectives/test_misa.py": MISA_TESTS,
        },
        edits={
            "torchrl/objectives/__init__.py": _export_misa_loss,
            "docs/source/reference/objectives_offline.rst": _offline_docs,
        },
        tests=["test/objectives/test_misa.py"],
    ),
    PR(
        4,
        "recipe",
        "[Algorithm] MISA offline recipe",
        files={
            "sota-implementations/misa/": "sota-implementations/misa/",
            "sota-implementations/misa/agent_group.py": AGENT_GROUP,
            "sota-implementations/misa/offline_data.py": OFFLINE_DATA,
            "sota-check/run_misa_offline.sh": "upstream/files/sota-check/run_misa_offline.sh",
        },
        edits={
            ".github/unittest/linux_sota/scripts/test_sota.py": _sota_commands,
            "README.md": _readme,
        },
        tests=[
            ".github/unittest/linux_sota/scripts/test_sota.py",
            "-k",
            "misa_offline",
        ],
        rewrites=RECIPE_REWRITES,
    ),
]

RECIPE_SUFFIXES = (".py", ".yaml", ".sh", ".md")


@dataclass
class Layout:
    """What one run wrote, edited, patched, skipped and stopped, per file."""

    written: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)
    formatted: bool = False


# -- rewriting one file ----------------------------------------------------------


def to_torchrl(source: str, python: bool = True, rewrites=()) -> str:
    """A file of this repo for TorchRL: imports and references, header, future import."""
    for pattern, repl in [*rewrites, *REWRITES]:
        source = re.sub(pattern, repl, source)
    if not python:
        return source
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


# -- merging test files ------------------------------------------------------------


def _top_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return []


def _rename(source: str, renames: dict[str, str]) -> str:
    """Renames the names (not attributes, strings or comments) in ``renames``."""
    lines = source.splitlines(keepends=True)
    spots, previous = [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in renames and previous != ".":
            spots.append(tok)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.string
    for tok in reversed(spots):
        (row, start), (_, end) = tok.start, tok.end
        line = lines[row - 1]
        lines[row - 1] = line[:start] + renames[tok.string] + line[end:]
    return "".join(lines)


def _imports(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str, str]]:
    """``(bound name, module or "", imported name [as alias])`` per imported name."""
    out = []
    for a in node.names:
        text = a.name + (f" as {a.asname}" if a.asname else "")
        bound = a.asname or a.name.split(".")[0]
        out.append((bound, getattr(node, "module", "") or "", text))
    return out


def _import_block(imports: list[tuple[str, str, str]]) -> str:
    """One statement per module; a name bound twice keeps its first import."""
    by_module: dict[str, list[str]] = {}
    bound: set[str] = set()
    for name, module, text in imports:
        if name in bound and module:
            continue
        bound.add(name)
        if text not in by_module.setdefault(module, []):
            by_module[module].append(text)
    lines = [f"import {text}" for text in sorted(by_module.pop("", []))]
    lines += [
        f"from {module} import {', '.join(sorted(names))}"
        for module, names in sorted(by_module.items())
    ]
    return "\n".join(lines)


def merge_tests(merge: Merge, repo: Path = REPO, rewrites=()) -> str:
    """The files of ``merge`` as one TorchRL file (before formatting)."""
    modules = {Path(s).stem for s in merge.sources}
    modules |= {
        Path(s).with_suffix("").as_posix().replace("/", ".") for s in merge.sources
    }
    imports = [i for line in merge.imports for i in _imports(ast.parse(line).body[0])]
    sections: list[str] = []
    marks: list[str] = []
    defined: dict[str, str] = {}  # top-level name -> its code, first file first
    for rel in merge.sources:
        text = (repo / rel).read_text()
        for old, new in merge.replace.get(rel, []):
            if old not in text:
                raise ValueError(
                    f"{rel}: {old!r} not found; update its Merge in make_pr"
                )
            text = text.replace(old, new)
        text = to_torchrl(text, rewrites=rewrites)
        if not merge.test:
            # examples that build their data with this package's own helpers
            text = re.sub(r'\n\s*Examples:\n.*?(?=\n\s*""")', "", text, flags=re.S)
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        tag = Path(rel).stem.rsplit("_", 1)[-1]
        # the file's import block: everything before its first other statement
        body = list(tree.body)
        doc = ""
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            doc = body.pop(0).value.value
        start = 0
        while start < len(body) and isinstance(
            body[start], (ast.Import, ast.ImportFrom)
        ):
            node = body[start]
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module != "__future__" and module not in modules:
                imports += _imports(node)
            start += 1
        # the section starts after the imports (or the docstring), comments included
        previous = body[start - 1] if start else (tree.body[0] if doc else None)
        first_line = previous.end_lineno + 1 if previous else 1
        drop = set(merge.drop.get(rel, []))
        nodes = [
            (n, _top_names(n), ast.get_source_segment(text, n)) for n in body[start:]
        ]

        # names that an earlier file binds to other code are renamed, and so is
        # code identical to an earlier file's that uses a renamed name
        def renamed(name: str) -> str:
            return f"{name}_{tag.upper() if name.isupper() else tag}"

        renames = {
            name: renamed(name)
            for _, names, code in nodes
            for name in names
            if name in defined and defined[name] != code and name not in drop
        }
        grown = True
        while grown:
            grown = False
            for node, names, code in nodes:
                same = names and all(defined.get(n) == code for n in names)
                used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if same and used & renames.keys() and not set(names) <= renames.keys():
                    renames.update({n: renamed(n) for n in names})
                    grown = True
        cut: list[tuple[int, int]] = []  # line spans (1-based, inclusive) removed
        cut += [
            (node.lineno, node.end_lineno)
            for top in body[start:]
            for node in ast.walk(top)
            if isinstance(node, ast.ImportFrom) and node.module in modules
        ]
        for node, names, code in nodes:
            if names == ["pytestmark"]:  # module marks go after the imports
                marks += [code] if code not in marks else []
                cut.append((_first_line(node), node.end_lineno))
                continue
            same = names and all(defined.get(n) == code for n in names)
            if drop.intersection(names) or (same and not renames.keys() & set(names)):
                cut.append((_first_line(node), node.end_lineno))
                continue
            for name in names:
                defined.setdefault(renames.get(name, name), code)
        missing = drop - {n for node in body for n in _top_names(node)}
        if missing:
            raise ValueError(f"{rel}: no top-level {sorted(missing)} to drop")
        kept = [
            line
            for number, line in enumerate(lines[first_line - 1 :], first_line)
            if not any(a <= number <= b for a, b in cut)
        ]
        section = _rename("".join(kept), renames) if renames else "".join(kept)
        comment = "".join(
            f"# {line}".rstrip() + "\n" for line in doc.strip().splitlines()
        )
        sections.append(comment + "\n" + section.strip("\n") + "\n")
    main = ""
    if merge.test:
        main = (
            '\n\nif __name__ == "__main__":\n'
            "    args, unknown = argparse.ArgumentParser().parse_known_args()\n"
            '    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)\n'
        )
        imports.append(("argparse", "", "argparse"))
    return (
        f'{HEADER}"""{merge.docstring}"""\n\nfrom __future__ import annotations\n\n'
        + _import_block(imports)
        + "\n\n"
        + "".join(f"{mark}\n" for mark in marks)
        + "\n\n"
        + "\n\n".join(sections).rstrip("\n")
        + "\n"
        + main
    )


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


# -- the series --------------------------------------------------------------------


def pr_files(pr: PR, repo: Path = REPO, header: bool = True) -> dict[str, str]:
    """Destination in pytorch/rl -> text, for every new file of ``pr``.

    ``header=False``: copied files keep their lines (imports rewritten only).
    """
    out: dict[str, str] = {}
    for dst, src in pr.files.items():
        if isinstance(src, Merge):
            out[dst] = merge_tests(src, repo, pr.rewrites)
        elif callable(src):
            out[dst] = src()
        elif dst.endswith("/"):
            for path in sorted((repo / src).rglob("*")):
                rel = path.relative_to(repo / src).as_posix()
                if path.suffix in RECIPE_SUFFIXES and "__pycache__" not in rel:
                    text = path.read_text()
                    python = header and path.suffix == ".py"
                    out[dst + rel] = to_torchrl(text, python, pr.rewrites)
        else:
            python = header and dst.endswith(".py")
            out[dst] = to_torchrl((repo / src).read_text(), python, pr.rewrites)
    return out


def missing_from_torchrl(files: dict[str, str], private: set[str]) -> list[str]:
    """What laid-out files still need from outside TorchRL: one line per use."""
    found = []  # (file, line, what)
    for rel, text in files.items():
        imports = {}
        if rel.endswith(".py"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = ", ".join(a.name for a in node.names)
                    imports[node.lineno] = (node.module, f"{names} from {node.module}")
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        imports[node.lineno] = (a.name, f"import {a.name}")
        for number, (module, what) in imports.items():
            if module.startswith("torchrl_misa"):
                found.append((rel, number, what))
            elif module in private and rel.startswith("sota-"):
                found.append((rel, number, f"{what} (private to TorchRL)"))
        for number, line in enumerate(text.splitlines(), 1):
            if "torchrl_misa" in line and not re.match(r"\s*(from|import) ", line):
                found.append((rel, number, f"mentions {line.strip()!r}"))
    return [f"{rel}:{number}: {what}" for rel, number, what in sorted(found)]


def _private_modules() -> set[str]:
    """Modules the series adds that are private (a ``_`` name): the recipe keeps off them."""
    out = set()
    for pr in SERIES:
        for dst in pr.files:
            parts = dst.removesuffix(".py").split("/")
            if (
                dst.startswith("torchrl/")
                and dst.endswith(".py")
                and parts[-1][0] == "_"
            ):
                out.add(".".join(parts))
    return out


def _apply_patch(dest: Path, pr: PR, layout: Layout) -> None:
    patch = HERE / pr.patch
    targets = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.M)
    absent = [t for t in targets if not (dest / t).exists()]
    if absent:
        layout.skipped += [f"{t} (patch of PR {pr.number})" for t in targets]
        return

    def git_apply(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "apply", *args, str(patch)],
            cwd=dest,
            capture_output=True,
            text=True,
        )

    if git_apply("--check", "--reverse").returncode == 0:
        return  # already applied
    result = git_apply()
    if result.returncode:
        layout.stopped[pr.number] = (
            f"{pr.patch} does not apply to this checkout:\n{result.stderr}"
        )
        return
    layout.patched += targets


def find_ufmt() -> str | None:
    found = shutil.which("ufmt")
    if found:
        return found
    default = Path("/tmp/lint/bin/ufmt")
    return str(default) if default.exists() else None


def lay_out(
    dest: Path, prs: list[int] | None = None, ufmt: str | None = None, repo: Path = REPO
) -> Layout:
    """Writes the PRs numbered ``prs`` (all by default) into ``dest``, in order.

    ``ufmt``: the ufmt executable that formats the written Python files
    (``None``: left as rewritten).
    """
    layout = Layout()
    private = _private_modules()
    for pr in SERIES:
        if prs is not None and pr.number not in prs:
            continue
        if any(n < pr.number for n in layout.stopped):
            layout.stopped[pr.number] = "a PR before it was stopped"
            continue
        touched: list[str] = []
        if pr.patch:
            _apply_patch(dest, pr, layout)
            touched += [p for p in layout.patched if p.endswith(".py")]
        missing = missing_from_torchrl(pr_files(pr, repo, header=False), private)
        if missing:
            layout.stopped[pr.number] = (
                f"PR {pr.number} ({pr.name}) is not laid out: its files need what "
                "TorchRL does not have:\n" + "\n".join(f"  {m}" for m in missing)
            )
            continue
        for rel, text in pr_files(pr, repo).items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            layout.written.append(rel)
            touched.append(rel)
        for rel, edit in pr.edits.items():
            target = dest / rel
            if not target.exists():
                layout.skipped.append(rel)
                continue
            text = target.read_text()
            new = edit(text)
            if new != text:
                target.write_text(new)
                layout.edited.append(rel)
            touched.append(rel)
        py = sorted({t for t in touched if t.endswith(".py")})
        if ufmt and py:
            subprocess.run([ufmt, "-q", "format", *py], cwd=dest, check=True)
            layout.formatted = True
    return layout


def describe_series(repo: Path = REPO) -> str:
    """The table: each PR, its description, its files and edits, its tests."""
    out = []
    for pr in SERIES:
        out.append(f"PR {pr.number} {pr.title}")
        out.append(f"  description: {pr.description.relative_to(repo)}")
        if pr.patch:
            patch = (HERE / pr.patch).read_text()
            for target in re.findall(r"^\+\+\+ b/(\S+)", patch, re.M):
                out.append(f"  ~ {target} (upstream/{pr.patch})")
        for rel in pr_files(pr, repo):
            out.append(f"  + {rel}")
        for rel in pr.edits:
            source = f" (functions of {FIXES[rel][0]})" if rel in FIXES else ""
            out.append(f"  ~ {rel}{source}")
        out.append(f"  tests: pytest {' '.join(pr.tests)}")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dest", type=Path, nargs="?", help="a pytorch/rl checkout (or an empty folder)"
    )
    parser.add_argument(
        "--pr", type=int, action="append", help="lay out this PR only (repeatable)"
    )
    parser.add_argument("--ufmt", default=find_ufmt(), help="the ufmt executable")
    parser.add_argument("--list", action="store_true", help="print the series' table")
    parser.add_argument("--tests", type=int, help="print PR N's pytest arguments")
    parser.add_argument(
        "--message", type=int, help="print PR N's title and description"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="print the recipe's test_sota.py command"
    )
    args = parser.parse_args(argv)
    if args.list:
        print(describe_series())
        return 0
    if args.smoke:
        print(smoke_command())
        return 0
    if args.tests or args.message:
        pr = SERIES[(args.tests or args.message) - 1]
        if args.tests:
            print("\n".join(pr.tests))
        else:
            print(f"{pr.title}\n\n{pr.description.read_text()}", end="")
        return 0
    if args.dest is None or (args.dest.exists() and not args.dest.is_dir()):
        parser.error("give the root of a pytorch/rl checkout (or an empty folder).")
    layout = lay_out(args.dest, args.pr, args.ufmt)
    print(f"wrote {len(layout.written)} files under {args.dest}")
    for rel in layout.written:
        print(f"  + {rel}")
    for rel in layout.patched + layout.edited:
        print(f"  ~ {rel}")
    for rel in layout.skipped:
        print(f"  skipped (not in this folder): {rel}")
    if not layout.formatted and layout.written:
        print("not formatted: no ufmt (pass --ufmt; see upstream/lint_pr.sh)")
    for number, message in layout.stopped.items():
        print(f"stopped at PR {number}: {message}", file=sys.stderr)
    return 1 if layout.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
