"""upstream/make_pr.py: the pull request's files at TorchRL's paths."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADER_FIRST_LINE = "# Copyright (c) Meta Platforms, Inc. and affiliates."


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
    return dest, make_pr.lay_out(dest)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_paths_are_torchrl_paths(laid_out):
    dest, layout = laid_out
    files = _files(dest)
    assert files == set(layout.written)
    # Each source file of the loss and sampler packages has its TorchRL twin.
    loss_sources = {
        p.name
        for p in (REPO / "torchrl_misa" / "objectives").glob("*.py")
        if p.name != "__init__.py"
    }
    mcmc_sources = {p.name for p in (REPO / "torchrl_misa" / "mcmc").glob("*.py")}
    assert {f"torchrl/objectives/{n}" for n in loss_sources} <= files
    assert {f"torchrl/modules/mcmc/{n}" for n in mcmc_sources} <= files
    for required in (
        "torchrl/objectives/misa.py",
        "torchrl/modules/mcmc/__init__.py",
        "test/objectives/test_misa.py",
        "sota-implementations/misa/misa_offline.py",
        "sota-implementations/misa/config.yaml",
        "sota-check/run_misa_offline.sh",
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
    assert not any("torchrl_misa" in f for f in files)


def test_python_files_have_header_future_import_and_compile(laid_out):
    dest, _ = laid_out
    py_files = sorted(dest.rglob("*.py"))
    assert py_files
    for path in py_files:
        text = path.read_text()
        assert text.splitlines()[0] == HEADER_FIRST_LINE, path
        tree = ast.parse(text, filename=str(path))  # compiles
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


def test_loss_and_sampler_import_torchrl_only(laid_out):
    dest, layout = laid_out
    for sub in ("torchrl", "test"):
        for path in (dest / sub).rglob("*.py"):
            tree = ast.parse(path.read_text())
            modules = [
                n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            ] + [
                a.name
                for n in ast.walk(tree)
                if isinstance(n, ast.Import)
                for a in n.names
            ]
            assert not [m for m in modules if m and m.startswith("torchrl_misa")], path
    assert all(
        line.startswith("sota-implementations/") for line in layout.leftover_imports
    )


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
    (tmp_path / "README.md").write_text("Examples include IQL, CQL, Dreamer.\n")

    first = make_pr.lay_out(tmp_path)
    after_first = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    second = make_pr.lay_out(tmp_path)
    after_second = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert after_first == after_second
    assert second.edited == []
    assert set(first.edited) == {
        "torchrl/objectives/__init__.py",
        "docs/source/reference/objectives_offline.rst",
        "docs/source/reference/modules.rst",
        "README.md",
    }
    assert first.skipped_edits == [".github/unittest/linux_sota/scripts/test_sota.py"]
    assert init.read_text() == (
        "from torchrl.objectives.iql import IQLLoss\n"
        "from torchrl.objectives.misa import MISALoss\n"
        "from torchrl.objectives.ppo import PPOLoss\n\n"
        '__all__ = [\n    "IQLLoss",\n    "MISALoss",\n    "PPOLoss",\n]\n'
    )
    assert (docs / "modules.rst").read_text() == (
        "   modules_mcts\n   modules_mcmc\n   modules_models\n"
    )
    assert (tmp_path / "README.md").read_text() == (
        "Examples include IQL, CQL, MISA, Dreamer.\n"
    )


def test_rewrite_keeps_docstring_first():
    source = '"""Doc."""\n\nimport torch\nfrom torchrl_misa.mcmc import hmc_sample\n'
    out = make_pr.to_torchrl(source)
    assert out.startswith(make_pr.HEADER + '"""Doc."""\n')
    assert "from torchrl.modules.mcmc import hmc_sample" in out
    assert out.index("from __future__ import annotations") < out.index("import torch")
