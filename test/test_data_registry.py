"""The data layer's footprint on TorchRL: one new dataset prefix, no private members read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data.datasets import D4RLExperienceReplay, load_dataset

import torchrl_misa  # noqa: F401
from torchrl_misa.data import (
    D4RLFileExperienceReplay,
    DatasetUnavailableError,
    load_offline_data,
    write_d4rl_hdf5,
)

# the registry as a fresh interpreter has it, entries shown as text
REGISTRY = """
import json, sys
{imports}
from torchrl.data.datasets.utils import _DATASET_REGISTRY
print(json.dumps({{k: repr(v) for k, v in _DATASET_REGISTRY.items()}}))
"""


def registry(imports: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", REGISTRY.format(imports=imports)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_only_adds_the_d4rl_file_prefix():
    stock = registry("import torchrl.data.datasets")
    ours = registry("import torchrl_misa")
    assert set(ours) - set(stock) == {"d4rl_file"}
    assert {k: v for k, v in ours.items() if k != "d4rl_file"} == stock
    assert "D4RLFileExperienceReplay" in ours["d4rl_file"]


def test_a_d4rl_file_prefix_already_there_is_left_alone():
    # a TorchRL that has its own "d4rl_file" keeps it; importing twice is harmless
    ours = registry(
        "from torchrl.data.datasets import register_dataset\n"
        "register_dataset('d4rl_file', 'torchrl.data.datasets.d4rl:D4RLExperienceReplay')\n"
        "import torchrl_misa, importlib, torchrl_misa.data\n"
        "importlib.reload(torchrl_misa.data)"
    )
    assert ours["d4rl_file"] == repr("torchrl.data.datasets.d4rl:D4RLExperienceReplay")


def test_d4rl_prefix_is_torchrl_own_class(tmp_path):
    # a cache folder as TorchRL's stock class writes it: load_dataset reads it
    # with no network, and the class that does is TorchRL's, not a subclass
    n = 5
    stored = TensorDict(
        {
            "observation": torch.zeros(n, 3),
            "action": torch.zeros(n, 1),
            "next": {
                "observation": torch.zeros(n, 3),
                "reward": torch.zeros(n, 1),
                "done": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    stored.memmap(tmp_path / "hopper-medium-v2")
    rb = load_dataset(
        "d4rl:hopper-medium-v2", batch_size=2, root=tmp_path, download=False
    )
    assert type(rb) is D4RLExperienceReplay
    assert len(rb) == n


def test_d4rl_file_prefix(tmp_path):
    n = 10
    data = {
        "observations": np.zeros((n, 2), "f4"),
        "actions": np.zeros((n, 1), "f4"),
        "rewards": np.zeros(n, "f4"),
        "terminals": np.zeros(n, bool),
        "timeouts": np.arange(n) % 5 == 4,
        "next_observations": np.zeros((n, 2), "f4"),
    }
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", data)
    rb = load_dataset(f"d4rl_file:{path}", batch_size=2, root=tmp_path / "c")
    assert type(rb) is D4RLFileExperienceReplay and len(rb) == n


def test_offline_error_comes_from_our_entry_point(tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DatasetUnavailableError, match="d4rl_file:.*demo"):
        load_offline_data("d4rl:hopper-medium-v2", 8, root=tmp_path / "c")


def test_no_private_torchrl_members_read():
    # the storage through rb.storage[...] / len(rb), TorchRL's functions by
    # their public names; overriding a dataset class's conversion hooks
    # (subclass methods) is the one contact with its internals
    package = Path(torchrl_misa.__file__).parent / "data"
    private = re.compile(
        r"\._storage\b"  # a replay buffer's or storage's private members
        r"|from torchrl(\.\w+)* import [^\n]*\b_[A-Za-z]\w*"  # TorchRL's private names
        r"|\btorchrl(\.\w+)*\._[A-Za-z]\w*"
    )
    found = [
        f"{path.relative_to(package)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not found, found
