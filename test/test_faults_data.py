"""Dataset faults: a full or read-only cache folder, files that pass a first look but are bad."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict

import torchrl_misa.data.cache as cache_module
from torchrl_misa.data import load_offline_data, write_d4rl_hdf5
from torchrl_misa.data.offline_data import check_transitions
from torchrl_misa.data.cache import CacheWriteError
from torchrl_misa.data.hdf5 import DatasetFormatError


def arrays(n=60, obs_dim=3, act_dim=1, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype("f4"),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype("f4"),
        "rewards": rng.normal(size=n).astype("f4"),
        "terminals": np.zeros(n, bool),
        "timeouts": np.arange(n) % 20 == 19,
        "next_observations": rng.normal(size=(n, obs_dim)).astype("f4"),
    }


def load(path, root):
    return load_offline_data(str(path), 8, root=root, clip_actions=None)


def visible(root: Path) -> list:
    """What is in ``root``, but the loads' lock files (``.<cache>.lock``, kept for reuse)."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


# ---------------------------------------------------------- a full disk
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k none $d && umount $d"
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


LOAD_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    from torchrl_misa.data import load_offline_data
    source, tmpfs = sys.argv[1:]
    root = os.path.join(tmpfs, "cache")
    for phase in ("full", "read-only"):
        if phase == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", tmpfs], check=True)
        try:
            load_offline_data(source, 8, root=root)
            print(phase, "loaded")
        except Exception as err:
            print(phase, type(err).__name__, err)
        df = ["df", "-B1", "--output=avail", tmpfs]
        avail = subprocess.run(df, capture_output=True, text=True).stdout.split()[-1]
        print(phase, "avail", avail)
        # what is left but the load's lock file (kept for reuse)
        names = os.listdir(root) if os.path.isdir(root) else []
        print(phase, "left", sorted(n for n in names if not n.endswith(".lock")))
    """)


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs here")
def test_cache_on_a_real_full_or_read_only_tmpfs(tmp_path):
    # 8000 rows: ~300 KB of transitions, on a 200 KB tmpfs. Without the check
    # the memory-mapped write dies with SIGBUS (no message, rc -7).
    source = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays(n=8000))
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    shell = (
        "d=$(mktemp -d) && mount -t tmpfs -o size=200k none $d && echo tmpfs=$d && "
        f"{sys.executable} {script} {source} $d"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-2000:]
    root = Path(re.search(r"tmpfs=(\S+)", out)[1]) / "cache"
    full = re.search(r"full CacheWriteError (.*)", out)
    assert full, out
    assert f"Not enough space for the dataset cache in {root}:" in full[1]
    needed, free = map(
        int, re.search(r"(\d+) bytes\) needed.*\((\d+) bytes\) free", full[1]).groups()
    )
    avail = int(re.search(r"full avail (\d+)", out)[1])  # what df says is free
    assert free == avail and needed > free
    assert needed >= 8000 * 4 * (3 + 3 + 1 + 1)  # the float columns alone
    assert "full left []" in out  # the failed write left nothing behind
    read_only = re.search(r"read-only CacheWriteError (.*)", out)
    assert read_only, out
    assert f"Cannot write the dataset cache in {root} (read-only" in read_only[1]
    assert "replay_buffer.root=" in read_only[1]


def test_too_little_space_is_refused_before_writing(tmp_path, monkeypatch):
    source = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays(n=500))
    root = tmp_path / "cache"
    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10_000)
    )
    with pytest.raises(CacheWriteError) as err:
        load(source, root)
    message = str(err.value)
    assert f"Not enough space for the dataset cache in {root}:" in message
    needed = int(re.search(r"(\d+) bytes\) needed", message)[1])
    assert "(10000 bytes) free" in message
    assert visible(root) == []  # no cache, no partial folder
    monkeypatch.undo()
    load(source, root)
    # the check asked for at least what the cache takes on disk
    (cache,) = [root / name for name in visible(root)]
    used = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert needed >= used


def test_a_reservation_refused_by_the_disk_is_reported(tmp_path, monkeypatch):
    # e.g. a quota, or a free count that is not reliable: the allocation fails
    source = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays())
    root = tmp_path / "cache"

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room, raising=False)
    with pytest.raises(CacheWriteError, match=f"Not enough space .* in {root}:"):
        load(source, root)
    assert visible(root) == []


def test_read_only_cache_folder_is_named(tmp_path, monkeypatch):
    source = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays())
    root = tmp_path / "cache"
    root.mkdir()
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if Path(path).parent == root:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(CacheWriteError) as err:
        load(source, root)
    assert f"Cannot write the dataset cache in {root} (read-only" in str(err.value)


def test_dead_builds_of_any_cache_in_the_folder_are_removed(tmp_path):
    root = tmp_path / "cache"
    source = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays())
    # a build of another version of the file, by a process that has died
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
    )
    host = cache_module.socket.gethostname()
    left = root / f".x-000000000000.partial-{host}-{proc.stdout.strip()}-0123abcd"
    left.mkdir(parents=True)
    (left / "observation.memmap").write_bytes(b"0" * 100)
    other_host = root / ".x-000000000000.partial-elsewhere-1-0123abcd"
    other_host.mkdir()
    load(source, root)
    names = visible(root)
    assert left.name not in names and other_host.name in names


def test_no_process_is_signalled_on_windows(tmp_path, monkeypatch):
    # os.kill(pid, 0) is no probe there: it would signal the build's process
    host = cache_module.socket.gethostname()
    left = tmp_path / f".x.partial-{host}-{os.getpid() + 10**6}-0123abcd"
    left.mkdir()
    final = tmp_path / "x"
    kills = []
    windows = SimpleNamespace(name="nt", kill=lambda *args: kills.append(args))
    monkeypatch.setattr(cache_module, "os", windows)
    cache_module.remove_stale_partials(final)
    assert kills == [] and left.exists()


# -------------------------------------------------- files that look right
def test_integer_observations_are_read_as_float32(tmp_path):
    data = arrays()
    data["observations"] = np.round(data["observations"] * 10).astype(np.int64)
    data["next_observations"] = np.round(data["next_observations"] * 10).astype("i4")
    path = write_d4rl_hdf5(tmp_path / "int.hdf5", data)
    with pytest.warns(UserWarning, match="'observations' is stored as int64"):
        offline = load(path, tmp_path / "cache")
    stored = offline.replay_buffer.storage[:]
    with h5py.File(path) as f:
        obs = f["observations"][()]
    assert stored["observation"].dtype == torch.float32
    np.testing.assert_array_equal(stored["observation"].numpy(), obs.astype("f4"))
    # a float32 network takes the batch (the failure was a dtype mismatch)
    batch = offline.replay_buffer.sample()
    torch.nn.Linear(3, 1)(batch["observation"])


def test_integers_float32_cannot_hold_are_refused(tmp_path):
    data = arrays()
    data["observations"] = np.full((60, 3), 2**25 + 1, np.int64)
    path = write_d4rl_hdf5(tmp_path / "big.hdf5", data)
    with pytest.raises(DatasetFormatError, match=f"{path}: key 'observations'"):
        load(path, tmp_path / "cache")


def test_actions_with_extra_dimensions_are_refused(tmp_path):
    data = arrays()
    data["actions"] = data["actions"][:, :, None]  # [N, 1, 1]
    path = write_d4rl_hdf5(tmp_path / "a.hdf5", data)
    with pytest.raises(DatasetFormatError) as err:
        load(path, tmp_path / "cache")
    message = str(err.value)
    assert str(path) in message and "'actions'" in message
    assert "(60, 1, 1)" in message and "[60, action_dim]" in message
    assert visible(tmp_path / "cache") == []  # refused before anything is cached


def test_a_file_cut_in_half_is_named(tmp_path):
    whole = write_d4rl_hdf5(tmp_path / "whole.hdf5", arrays())
    cut = tmp_path / "cut.hdf5"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert h5py.is_hdf5(cut)  # its header is intact: it passes the format check
    with pytest.raises(DatasetFormatError, match=f"{cut} is a damaged HDF5 file"):
        load(cut, tmp_path / "cache")


@pytest.mark.parametrize("prefix", ["", "d4rl_file:"])
def test_a_folder_given_as_the_dataset(tmp_path, prefix):
    folder = tmp_path / "datasets.hdf5"
    folder.mkdir()
    write_d4rl_hdf5(folder / "inside.hdf5", arrays())
    with pytest.raises(DatasetFormatError) as err:
        load(f"{prefix}{folder}", tmp_path / "cache")
    assert f"{folder} is a folder, not a dataset file" in str(err.value)
    assert "inside.hdf5" in str(err.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("observation", torch.zeros(4, 3, dtype=torch.int64), "torch.int64 values"),
        ("action", torch.zeros(4, 1, 1), "'action' has shape [4, 1, 1]"),
    ],
)
def test_transitions_of_any_source_are_checked(key, value, expected):
    data = TensorDict(
        {
            "observation": torch.zeros(4, 3),
            "action": torch.zeros(4, 1),
            ("next", "observation"): torch.zeros(4, 3),
            ("next", "reward"): torch.zeros(4, 1),
        },
        batch_size=[4],
    )
    data[key] = value
    with pytest.raises(DatasetFormatError, match=re.escape(expected)):
        check_transitions(data, "minari:x")


def script_config(misa_script, dataset, root):
    """The training script's demo config on ``dataset``, its cache under ``root``."""
    from hydra import compose, initialize_config_dir

    folder = Path(misa_script.misa_offline.__file__).parent
    with initialize_config_dir(config_dir=str(folder), version_base="1.2"):
        return compose(
            "config",
            overrides=[
                "preset=demo",
                f"replay_buffer.dataset={dataset}",
                f"replay_buffer.root={root}",
            ],
        )


def test_image_like_observations_stop_the_script_with_what_to_do(tmp_path, misa_script):
    """The library loads [N, 2, 3] observations; the script's MLPs cannot take them."""
    data = arrays(n=40)
    for key in ("observations", "next_observations"):
        data[key] = np.repeat(data[key][:, None, :], 2, axis=1)
    path = write_d4rl_hdf5(tmp_path / "images.hdf5", data, {"env_id": "Pendulum-v1"})
    assert load(path, tmp_path).replay_buffer.sample()["observation"].shape[1:] == (
        2,
        3,
    )
    cfg = script_config(misa_script, path, tmp_path)
    with pytest.raises(
        misa_script.utils.ConfigError, match=r"observations of shape \[2, 3\]"
    ):
        misa_script.utils.make_offline_data(cfg, torch.device("cpu"))


@pytest.mark.parametrize("fault", ["no network", "bad values"])
def test_a_dataset_that_cannot_load_stops_the_script_with_its_message(
    tmp_path, misa_script, d4rl_server, fault
):
    """The loaders' errors reach the user as the setting plus what to do, no traceback."""
    if fault == "no network":
        d4rl_server(None)
        dataset, expected = "hopper-medium-v2", "could not be downloaded"
    else:
        data = arrays(n=40)
        data["observations"][7, 1] = np.nan
        dataset = str(write_d4rl_hdf5(tmp_path / "nan.hdf5", data))
        expected = "key 'observations' holds NaN or inf values"
    cfg = script_config(misa_script, dataset, tmp_path / "cache")
    with pytest.raises(misa_script.utils.ConfigError) as err:
        misa_script.utils.make_offline_data(cfg, torch.device("cpu"))
    assert str(err.value).startswith(f"replay_buffer.dataset={dataset}: ")
    assert expected in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
