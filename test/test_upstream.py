"""upstream/make_pr.py: the pull-request series, laid out at TorchRL's paths."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADER_FIRST_LINE = "# Copyright (c) Meta Platforms, Inc. and affiliates."
TAGS = ("[Algorithm]", "[BugFix]", "[Feature]", "[Doc]", "[Test]", "[Refactor]")


def _load_make_pr():
    spec = importlib.util.spec_from_file_location(
        "make_pr", REPO / "upstream" / "make_pr.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_pr"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


make_pr = _load_make_pr()


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory) -> tuple[Path, object]:
    dest = tmp_path_factory.mktemp("pytorch_rl")
    return dest, make_pr.lay_out(dest, ufmt=None)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _pr(name: str):
    return next(pr for pr in make_pr.SERIES if pr.name == name)


def test_series_table():
    assert [pr.number for pr in make_pr.SERIES] == [1, 2, 3, 4]
    for pr in make_pr.SERIES:
        assert pr.title.startswith(TAGS), pr.title
        assert pr.description.is_file() and pr.description.read_text().strip(), pr
        assert pr.tests, pr
        for dst in list(pr.files) + list(pr.edits):
            assert "torchrl_misa" not in dst
    # no file goes in two PRs
    new = [dst for pr in make_pr.SERIES for dst in make_pr.pr_files(pr)]
    assert len(new) == len(set(new))
    patch = (make_pr.HERE / _pr("datasets").patch).read_text()
    assert "torchrl_misa" not in patch


def test_paths_are_torchrl_paths(laid_out):
    dest, layout = laid_out
    files = _files(dest)
    assert files == set(layout.written)
    mcmc_sources = {p.name for p in (REPO / "torchrl_misa" / "mcmc").glob("*.py")}
    assert {f"torchrl/modules/mcmc/{n}" for n in mcmc_sources} <= files
    for required in (
        "torchrl/objectives/misa.py",
        "torchrl/modules/mcmc/__init__.py",
        "test/objectives/test_misa.py",
        "test/modules/test_mcmc.py",
        "docs/source/reference/modules_mcmc.rst",
    ):
        assert required in files, required
    roots = (
        "torchrl/objectives/",
        "torchrl/modules/mcmc/",
        "test/objectives/",
        "test/modules/",
        "sota-implementations/misa/",
        "sota-check/",
        "docs/source/reference/",
    )
    stray = sorted(f for f in files if not f.startswith(roots))
    assert not stray, f"files outside TorchRL's layout: {stray}"
    # one test file per area, as TorchRL keeps them
    assert sorted(f for f in files if f.startswith("test/")) == [
        "test/modules/test_mcmc.py",
        "test/objectives/test_misa.py",
    ]


def test_no_file_mentions_torchrl_misa(laid_out):
    dest, _ = laid_out
    for rel in _files(dest):
        assert "torchrl_misa" not in rel
        assert "torchrl_misa" not in (dest / rel).read_text(), rel


def test_python_files_have_header_future_import_and_compile(laid_out):
    dest, _ = laid_out
    py_files = sorted(dest.rglob("*.py"))
    assert py_files
    for path in py_files:
        text = path.read_text()
        assert text.splitlines()[0] == HEADER_FIRST_LINE, path
        tree = ast.parse(text, filename=str(path))
        futures = [
            node
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        ]
        assert any(a.name == "annotations" for f in futures for a in f.names), path
        # A module docstring, when there is one, stays the first statement.
        strings = [
            i
            for i, node in enumerate(tree.body)
            if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ]
        assert not strings or strings[0] == 0, f"docstring after code in {path}"
        compile(text, str(path), "exec")


def _test_names(tree: ast.Module) -> list[str]:
    return [
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]


@pytest.mark.parametrize(
    "merge, dst",
    [
        (make_pr.MISA_TESTS, "test/objectives/test_misa.py"),
        (make_pr.MCMC_TESTS, "test/modules/test_mcmc.py"),
    ],
    ids=["misa", "mcmc"],
)
def test_merged_test_file_keeps_every_test(laid_out, merge, dst):
    dest, _ = laid_out
    tree = ast.parse((dest / dst).read_text())
    expected = [
        name
        for src in merge.sources
        for name in _test_names(ast.parse((REPO / src).read_text()))
    ]
    assert sorted(_test_names(tree)) == sorted(expected)
    # every top-level name is bound once (no test or helper shadowed by another)
    names = [n for node in tree.body for n in make_pr._top_names(node)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_test_misa_is_a_torchrl_loss_test(laid_out):
    dest, _ = laid_out
    text = (dest / "test/objectives/test_misa.py").read_text()
    tree = ast.parse(text)
    (cls,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TestMISA"
    ]
    assert [ast.unparse(b) for b in cls.bases] == ["LossModuleTestBase"]
    assert "test_reset_parameters_recursive" in [
        n.name for n in cls.body if hasattr(n, "name")
    ]
    assert "get_default_devices()" in text and "DEVICES" not in text
    assert "class _check_td_steady" not in text
    imported = {
        a.name
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module == "_objectives_common"
        for a in n.names
    }
    assert imported == {"LossModuleTestBase", "_check_td_steady"}
    assert text.rstrip().endswith("+ unknown)")  # the __main__ block


def test_recipe_laid_out_only_on_torchrl(laid_out):
    dest, layout = laid_out
    recipe = make_pr.pr_files(_pr("recipe"), header=False)
    uses = [
        (rel, node.module)
        for rel, text in recipe.items()
        if rel.endswith(".py")
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("torchrl_misa")
    ]
    assert 4 not in layout.stopped, layout.stopped.get(4)
    assert not uses
    assert "sota-implementations/misa/misa_offline.py" in layout.written


def test_edits_of_a_checkout_are_placed_and_idempotent(tmp_path):
    objectives = tmp_path / "torchrl" / "objectives"
    objectives.mkdir(parents=True)
    init = objectives / "__init__.py"
    init.write_text(
        "from torchrl.objectives.iql import IQLLoss\n"
        "from torchrl.objectives.ppo import PPOLoss\n\n"
        '__all__ = [\n    "IQLLoss",\n    "PPOLoss",\n]\n'
    )
    docs = tmp_path / "docs" / "source" / "reference"
    docs.mkdir(parents=True)
    (docs / "objectives_offline.rst").write_text("    CQLLoss\n    TD3BCLoss\n")
    (docs / "modules.rst").write_text("   modules_mcts\n   modules_models\n")

    first = make_pr.lay_out(tmp_path, ufmt=None)
    after_first = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    second = make_pr.lay_out(tmp_path, ufmt=None)
    after_second = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert after_first == after_second
    assert second.edited == []
    assert set(first.edited) == {
        "torchrl/objectives/__init__.py",
        "docs/source/reference/objectives_offline.rst",
        "docs/source/reference/modules.rst",
    }
    assert init.read_text() == (
        "from torchrl.objectives.iql import IQLLoss\n"
        "from torchrl.objectives.misa import MISALoss\n"
        "from torchrl.objectives.ppo import PPOLoss\n\n"
        '__all__ = [\n    "IQLLoss",\n    "MISALoss",\n    "PPOLoss",\n]\n'
    )
    assert (docs / "modules.rst").read_text() == (
        "   modules_mcts\n   modules_mcmc\n   modules_models\n"
    )
    assert make_pr._readme("Examples include IQL, CQL, Dreamer.\n") == (
        "Examples include IQL, CQL, MISA, Dreamer.\n"
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pr1_patch_applies_to_torchrl_files(tmp_path):
    """PR 1's changes of torchrl/ apply to the installed torchrl's files and compile."""
    import torchrl

    patch = make_pr.HERE / _pr("datasets").patch
    targets = re.findall(r"^\+\+\+ b/(torchrl/\S+)", patch.read_text(), re.M)
    installed = Path(torchrl.__file__).parent
    for rel in targets:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(installed / rel.removeprefix("torchrl/"), tmp_path / rel)
    subprocess.run(
        ["git", "apply", "--include=torchrl/*", str(patch)], cwd=tmp_path, check=True
    )
    for rel in targets:
        text = (tmp_path / rel).read_text()
        assert text != (installed / rel.removeprefix("torchrl/")).read_text(), rel
        compile(text, rel, "exec")
    # the test code it adds compiles too, hunk by hunk
    tests = patch.read_text().split("+++ b/test/libs/test_datasets.py")[1]
    tests = tests.split("\ndiff --git")[0]
    hunks = [
        textwrap.dedent("\n".join(re.findall(r"^\+(.*)$", hunk, re.M)))
        for hunk in tests.split("\n@@")[1:]
    ]
    assert any("class TestD4RLConversion:" in hunk for hunk in hunks)
    for hunk in hunks:
        compile(hunk, "test/libs/test_datasets.py", "exec")


def test_merge_dedupes_renames_and_drops(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test/test_a.py").write_text(
        '"""File a."""\nimport torch\n\nN = 1\n\n\ndef seed():\n    return 0\n\n\n'
        "def gen():\n    return N\n\n\ndef test_a():\n    assert gen() == N\n"
    )
    (tmp_path / "test/test_b.py").write_text(
        '"""File b."""\nimport torch\nfrom test_a import N\n\nN = 2\n\n\n'
        "def seed():\n    return 0\n\n\ndef gen():\n    return N\n\n\n"
        "def helper():\n    return N\n\n\n"
        "def test_b():\n    assert helper() and gen() == N and seed() == 0 and torch.x.N\n"
    )
    merge = make_pr.Merge(
        sources=["test/test_a.py", "test/test_b.py"],
        docstring="Both.",
        drop={"test/test_b.py": ["helper"]},
        replace={"test/test_b.py": [("helper() and ", "")]},
    )
    text = make_pr.merge_tests(merge, repo=tmp_path)
    tree = ast.parse(text)
    names = [n for node in tree.body for n in make_pr._top_names(node)]
    # seed is the same in both files: kept once; N differs: b's is renamed, and
    # so is b's gen, the same code as a's but reading b's N
    assert names == ["N", "seed", "gen", "test_a", "N_B", "gen_b", "test_b"]
    assert "assert gen_b() == N_B and seed() == 0 and torch.x.N" in text
    assert "from test_a" not in text and text.count("import torch") == 1
    assert "# File b." in text


def test_rewrite_keeps_docstring_first():
    source = '"""Doc."""\n\nimport torch\nfrom torchrl_misa.mcmc import hmc_sample\n'
    out = make_pr.to_torchrl(source)
    assert out.startswith(make_pr.HEADER + '"""Doc."""\n')
    assert "from torchrl.modules.mcmc import hmc_sample" in out
    assert out.index("from __future__ import annotations") < out.index("import torch")


def test_recipe_imports_resolve_to_its_own_modules(laid_out):
    # every name the recipe imports from a module of its own folder is defined
    # at the top of that module (the merged helpers included)
    dest, layout = laid_out
    assert 4 not in layout.stopped
    folder = dest / "sota-implementations" / "misa"
    local = {p.stem: p for p in folder.glob("*.py")}
    assert {"offline_data", "agent_group"} <= local.keys()

    def top_names(path):
        tree = ast.parse(path.read_text())
        names = {n for node in tree.body for n in make_pr._top_names(node)}
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {a.asname or a.name.split(".")[0] for a in node.names}
        return names

    checked = 0
    for path in local.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in local:
                defined = top_names(local[node.module])
                for alias in node.names:
                    assert alias.name in defined, (path.name, node.module, alias.name)
                    checked += 1
    assert checked > 10


def test_merged_module_drops_its_own_imports(tmp_path):
    pkg = tmp_path / "torchrl_misa" / "data"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text(
        '"""Module a."""\n\nimport torch\n\n\ndef one():\n'
        '    """One.\n\n    Examples:\n        >>> from torchrl_misa.data import b\n'
        '        >>> one()\n        1\n    """\n    return 1\n'
    )
    (pkg / "b.py").write_text(
        '"""Module b."""\n\nimport torch\nfrom torchrl_misa.data.a import one\n\n\n'
        "def two():\n    from torchrl_misa.data.a import one\n\n    return one() + 1\n"
    )
    merge = make_pr.Merge(
        sources=["torchrl_misa/data/a.py", "torchrl_misa/data/b.py"],
        docstring="Both.",
        test=False,
    )
    text = make_pr.merge_tests(merge, repo=tmp_path)
    namespace = {}
    exec(compile(text, "merged", "exec"), namespace)
    assert namespace["two"]() == 2
    assert "torchrl_misa" not in text and "Examples" not in text
    assert "__main__" not in text and text.count("import torch") == 1


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from torchrl_misa.data import load_offline_data", "from offline_data import"),
        ("see :func:`torchrl_misa.data.cache.content_sha256`", "offline_data.content"),
        ("from torchrl_misa.agents import AgentGroup", "from agent_group import"),
        ("  project_name: torchrl_misa\n", "project_name: torchrl_example_misa"),
    ],
)
def test_recipe_rewrites(source, expected):
    out = make_pr.to_torchrl(source, python=False, rewrites=make_pr.RECIPE_REWRITES)
    assert expected in out and "torchrl_misa" not in out


def test_missing_names_are_listed():
    files = {
        "sota-implementations/x/a.py": "import os\nfrom torchrl_misa.data import y\n",
        "sota-implementations/x/b.py": "from torchrl.objectives._misa_checks import c\n",
        "sota-implementations/x/c.yaml": "name: torchrl_misa\n",
    }
    found = make_pr.missing_from_torchrl(files, {"torchrl.objectives._misa_checks"})
    assert found == [
        "sota-implementations/x/a.py:2: y from torchrl_misa.data",
        "sota-implementations/x/b.py:1: c from torchrl.objectives._misa_checks "
        "(private to TorchRL)",
        "sota-implementations/x/c.yaml:1: mentions 'name: torchrl_misa'",
    ]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pr1_helpers_are_the_package_functions_and_run_in_torchrl(tmp_path):
    """PR 1 calls the package's own fixes, copied into TorchRL's modules, and they run there."""
    import torch
    import torchrl
    from tensordict import TensorDict

    patch = make_pr.HERE / _pr("datasets").patch
    installed = Path(torchrl.__file__).parent
    for rel in make_pr.FIXES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(installed / rel.removeprefix("torchrl/"), tmp_path / rel)
    subprocess.run(
        ["git", "apply", "--include=torchrl/data/datasets/[du]*", str(patch)],
        cwd=tmp_path,
        check=True,
    )
    namespaces = {}
    for rel, (module, names, _) in make_pr.FIXES.items():
        edit = _pr("datasets").edits[rel]
        text = edit((tmp_path / rel).read_text())
        assert edit(text) == text  # a second run adds nothing
        tree = ast.parse(text)
        defined = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        # each helper is the package function of the same name, renamed private
        package = ast.parse((REPO / module).read_text())
        for name in names:
            ours = next(n for n in package.body if getattr(n, "name", "") == name)
            theirs = defined[f"_{name}"]
            assert len(theirs.body) == len(ours.body)
            assert [type(s) for s in theirs.body] == [type(s) for s in ours.body]
        # ... and runs with the module's own imports only (TorchRL's left out:
        # the installed one predates the PR)
        helpers = [defined[f"_{name}"] for name in names]
        keep = [
            n
            for n in tree.body
            if isinstance(n, ast.Import)
            or isinstance(n, ast.ImportFrom)
            and n.level == 0
            and n.module.split(".")[0] != "torchrl"
            or n in helpers
        ]
        namespace = {}
        exec(compile(ast.Module(keep, []), rel, "exec"), namespace)
        namespaces[rel] = namespace
    d4rl = namespaces["torchrl/data/datasets/d4rl.py"]
    rows = TensorDict(
        observations=torch.arange(8.0).reshape(4, 2),
        next_observations=torch.arange(2.0, 10.0).reshape(4, 2),
        batch_size=[4],
    )
    out = d4rl["_repeat_last_row"](rows)
    expected = torch.tensor([[2.0, 3], [4, 5], [6, 7], [8, 9], [8, 9]])
    assert torch.equal(out["next_observations"], expected)
    flags = TensorDict(
        {
            "next": {
                "terminated": torch.tensor([[1], [0], [0]]).bool(),
                "done": torch.tensor([[1], [1], [0]]).bool(),
            }
        },
        [3],
    )
    unknown = d4rl["_unknown_next_observation"]
    assert unknown(flags, has_next_observations=True).tolist() == [True, False, False]
    assert unknown(flags, has_next_observations=False).tolist() == [True, True, False]
    utils = namespaces["torchrl/data/datasets/utils.py"]
    data = TensorDict(observation=torch.arange(6.0).reshape(3, 2), batch_size=[3])
    (tmp_path / "cache" / "x").mkdir(parents=True)  # a folder in the way is replaced
    # builds killed on this host (another cache's too) are removed, others kept
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = socket.gethostname()
    kept = [
        f".x.partial-{host}-{os.getpid()}-0123abcd",
        ".x.partial-elsewhere-1-0123abcd",
    ]
    for name in [*kept, f".y.partial-{host}-{dead}-0123abcd"]:
        (tmp_path / "cache" / name).mkdir()
    stored = utils["_memmap_atomic"](
        data, tmp_path / "cache" / "x", lambda folder, td: (folder / "extra").touch()
    )
    assert torch.equal(stored["observation"], data["observation"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        ["x", *kept]
    )
    assert (tmp_path / "cache" / "x" / "extra").is_file()
