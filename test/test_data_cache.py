"""Dataset caches: interrupted writes, damaged files, reuse, TorchRL's stock caches."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from tensordict import MemoryMappedTensor

import torchrl_misa.data.d4rl as d4rl_module
from torchrl_misa.data import (
    DatasetUnavailableError,
    load_offline_data,
    OfflineD4RLExperienceReplay,
    write_d4rl_hdf5,
)

# the check file's name, written by torchrl_misa.data.cache
CHECK_FILE = "cache_check.json"


def read_h5(path):
    """The source file, read independently of the loader."""
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


@pytest.fixture
def source(tmp_path, tiny_d4rl_file):
    return tiny_d4rl_file(tmp_path / "tiny.hdf5", 3, 2, "Pendulum-v1", n=300)


def only_cache(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return folder


def entries(folder: Path) -> list:
    """What is in ``folder``, but the loads' lock files (``.<cache>.lock``, kept for reuse)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def load(path, root):
    return load_offline_data(path, 8, root=root, clip_actions=None).replay_buffer


class Interrupted(BaseException):
    """Stands for the process being stopped (not an ``Exception``: nothing catches it)."""


def interrupt_memmap_after(monkeypatch, leaves: int):
    """The next memory-mapping stops after writing ``leaves`` files."""
    original = MemoryMappedTensor.from_tensor.__func__
    calls = {"n": 0}

    def from_tensor(cls, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > leaves:
            raise Interrupted
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(MemoryMappedTensor, "from_tensor", classmethod(from_tensor))
    return calls


def test_interrupted_write_leaves_nothing_that_later_loads_trip_on(
    tmp_path, source, monkeypatch, storage_matches_file
):
    root = tmp_path / "cache"
    calls = interrupt_memmap_after(monkeypatch, 4)
    with pytest.raises(Interrupted):
        load(source, root)
    assert calls["n"] == 5  # it did stop half-way through the files
    # nothing under the cache's own name: the write was not published
    assert not [p for p in root.iterdir() if not p.name.startswith(".")]
    monkeypatch.undo()
    rb = load(source, root)
    storage_matches_file(rb, read_h5(source))
    assert entries(root) == [only_cache(root).name]


def test_killed_load_then_reload(tmp_path, source, storage_matches_file):
    # a real SIGKILL: no exception handler or `finally` runs in the killed process
    root = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, signal
        from tensordict import MemoryMappedTensor
        from torchrl_misa.data import load_offline_data
        original = MemoryMappedTensor.from_tensor.__func__
        calls = [0]
        def from_tensor(cls, *args, **kwargs):
            calls[0] += 1
            if calls[0] > 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(cls, *args, **kwargs)
        MemoryMappedTensor.from_tensor = classmethod(from_tensor)
        load_offline_data({str(source)!r}, 8, root={str(root)!r})
        """)
    # run from tmp_path: the package is imported as installed, not from the cwd
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, cwd=tmp_path
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # the killed write left a folder behind, but not under the cache's name
    left = [root / name for name in entries(root)]
    assert left and all(p.name.startswith(".") for p in left), left
    rb = load(source, root)
    storage_matches_file(rb, read_h5(source))
    # the dead process's partial folder is gone, only the finished cache is left
    assert entries(root) == [only_cache(root).name]


# a run of its own: waits for the file `go`, loads, prints the observations' sum
LOADER = """
import pathlib, sys, time
from torchrl_misa.data import load_offline_data
source, root, go = sys.argv[1:]
while not pathlib.Path(go).exists():
    time.sleep(0.01)
print("loading", flush=True)
rb = load_offline_data(source, 8, root=root, clip_actions=None).replay_buffer
print(float(rb.storage[:]["observation"].double().sum()), flush=True)
"""


def start_loaders(n: int, source: Path, root: Path, go: Path) -> list:
    # run from the test's folder: the package is imported as installed
    return [
        subprocess.Popen(
            [sys.executable, "-c", LOADER, str(source), str(root), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=go.parent,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(n)
    ]


def test_runs_loading_one_dataset_at_once_all_get_it(tmp_path, tiny_d4rl_file):
    # e.g. the jobs of a sweep started together on one machine: each builds the
    # cache; one that finished must not lose its folder to one that finished later
    source = tiny_d4rl_file(tmp_path / "big.hdf5", 11, 3, "Hopper-v5", n=30000)
    root, go = tmp_path / "cache", tmp_path / "go"
    procs = start_loaders(4, source, root, go)
    go.touch()
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    expected = read_h5(source)["observations"].astype(np.float64).sum()
    for out, _ in outs:
        np.testing.assert_allclose(float(out.split()[-1]), expected, rtol=1e-9)
    assert entries(root) == [only_cache(root).name]


def test_a_load_waits_while_another_run_holds_the_cache(tmp_path, source):
    from torchrl_misa.data.cache import cache_lock

    root, go = tmp_path / "cache", tmp_path / "go"
    load(source, root)
    cache = only_cache(root)
    shutil.rmtree(cache)
    with cache_lock(cache):  # as a run building or opening it would
        (proc,) = start_loaders(1, source, root, go)
        go.touch()
        assert proc.stdout.readline().strip() == "loading"
        time.sleep(3)  # a tiny file's load takes well under that
        assert proc.poll() is None and not cache.exists()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    expected = read_h5(source)["observations"].astype(np.float64).sum()
    np.testing.assert_allclose(float(out.split()[-1]), expected, rtol=1e-9)
    assert cache.exists()


def test_intact_cache_is_reused_without_reading_the_source(
    tmp_path, source, monkeypatch, storage_matches_file, recwarn
):
    root = tmp_path / "cache"
    load(source, root)

    def no_read(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(d4rl_module, "read_d4rl_hdf5", no_read)
    rb = load(source, root)
    storage_matches_file(rb, read_h5(source))
    assert not [w for w in recwarn if "cache" in str(w.message)]


def _damage_meta(cache: Path):
    (cache / "meta.json").unlink()
    return "meta.json"


def _truncate(cache: Path):
    path = cache / "observation.memmap"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return "observation.memmap has"


def _zero(cache: Path):
    path = cache / "next" / "reward.memmap"
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)  # same size: only the checksum can tell
    return "next/reward"


def _drop_file(cache: Path):
    (cache / "next" / "terminated.memmap").unlink()
    return "terminated.memmap is missing"


@pytest.mark.parametrize("damage", [_damage_meta, _truncate, _zero, _drop_file])
def test_damaged_cache_is_rebuilt(tmp_path, source, damage, storage_matches_file):
    root = tmp_path / "cache"
    load(source, root)
    what = damage(only_cache(root))
    with pytest.warns(UserWarning, match="Rebuilding the cache") as record:
        rb = load(source, root)
    assert any(what in str(w.message) for w in record), [str(w.message) for w in record]
    storage_matches_file(rb, read_h5(source))
    # and the rebuilt cache is sound: the next load is silent
    rb = load(source, root)
    storage_matches_file(rb, read_h5(source))


def test_damaged_cache_without_download_says_how_to_rebuild(tmp_path, source):
    from torchrl.data.datasets import load_dataset

    from torchrl_misa.data.cache import CacheDamagedError

    root = tmp_path / "cache"
    load(source, root)
    _damage_meta(only_cache(root))
    with pytest.raises(CacheDamagedError, match="meta.json.*download=True"):
        load_dataset(f"d4rl_file:{source}", batch_size=8, root=root, download=False)


def test_d4rl_id_cache_only(tmp_path, source, d4rl_server, storage_matches_file):
    arrays = read_h5(source)
    d4rl_server(arrays)
    root = tmp_path / "cache"
    OfflineD4RLExperienceReplay("hopper-medium-v2", 8, root=root)
    cache = root / "hopper-medium-v2"
    assert (cache / CHECK_FILE).exists()
    d4rl_server(None)
    # a cache with no check file, e.g. made by TorchRL's stock class: with no
    # source at hand it is the only copy, and is used as it is
    (cache / CHECK_FILE).unlink()
    rb = OfflineD4RLExperienceReplay("hopper-medium-v2", 8, root=root)
    storage_matches_file(rb, arrays)
    # a damaged cache and no network: it is dropped and the error says where
    # to bring the data from
    d4rl_server(arrays)
    OfflineD4RLExperienceReplay("hopper-medium-v2", 8, root=root, download="force")
    d4rl_server(None)
    _damage_meta(cache)
    with pytest.warns(UserWarning, match="meta.json"):
        with pytest.raises(DatasetUnavailableError, match="hopper_medium-v2.hdf5"):
            OfflineD4RLExperienceReplay("hopper-medium-v2", 8, root=root)
    assert not cache.exists()


def test_cache_of_an_edited_source_is_not_reused(tmp_path, storage_matches_file):
    # same name and size, new content: the file's key changes with its mtime
    rng = np.random.default_rng(1)
    n = 60
    arrays = {
        "observations": rng.normal(size=(n, 2)).astype("f4"),
        "actions": rng.uniform(-1, 1, (n, 1)).astype("f4"),
        "rewards": rng.normal(size=n).astype("f4"),
        "terminals": np.zeros(n, bool),
        "timeouts": np.arange(n) % 20 == 19,
        "next_observations": rng.normal(size=(n, 2)).astype("f4"),
    }
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {})
    load(path, tmp_path / "c")
    arrays["rewards"] = arrays["rewards"] + 1
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {})
    os.utime(path, ns=(1, 1))
    storage_matches_file(load(path, tmp_path / "c"), read_h5(path))


# -- Minari ------------------------------------------------------------------
needs_minari = pytest.mark.skipif(
    importlib.util.find_spec("minari") is None, reason="minari not installed"
)


def check_minari(rb, episodes):
    data = rb.storage[:]
    obs = np.concatenate([e.observations[:-1] for e in episodes])
    next_obs = np.concatenate([e.observations[1:] for e in episodes])
    np.testing.assert_array_equal(data["observation"].numpy(), obs)
    np.testing.assert_array_equal(data["next", "observation"].numpy(), next_obs)
    np.testing.assert_allclose(
        data["next", "reward"].numpy()[:, 0],
        np.concatenate([e.rewards for e in episodes]),
    )
    term = np.concatenate([e.terminations for e in episodes]) == 1
    trunc = np.concatenate([e.truncations for e in episodes]) == 1
    assert data["next", "done"].dtype == data["next", "terminated"].dtype
    assert str(data["next", "done"].dtype) == "torch.bool"
    np.testing.assert_array_equal(data["next", "terminated"].numpy()[:, 0], term)
    np.testing.assert_array_equal(data["next", "truncated"].numpy()[:, 0], trunc)
    np.testing.assert_array_equal(data["next", "done"].numpy()[:, 0], term | trunc)


@needs_minari
def test_minari_cache_reused_and_rebuilt(tmp_path, monkeypatch, toy_minari):
    import torchrl_misa.data.minari_data as minari_module

    episodes = toy_minari(tmp_path / "minari")
    root = tmp_path / "cache"
    name = "minari:toy/pendulum/random-v0"
    check_minari(load(name, root), episodes)
    cache = root / "toy" / "pendulum" / "random-v0"
    assert (cache / CHECK_FILE).exists()
    assert entries(cache.parent) == ["random-v0"]

    # reused: not converted again
    build = minari_module.build_minari_cache

    def no_build(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(minari_module, "build_minari_cache", no_build)
    check_minari(load(name, root), episodes)
    monkeypatch.setattr(minari_module, "build_minari_cache", build)

    # damaged: rebuilt
    _zero(cache)
    with pytest.warns(UserWarning, match="next/reward"):
        rb = load(name, root)
    check_minari(rb, episodes)
    # TorchRL's stock cache (no check file; its converter stores zeros): rebuilt
    (cache / CHECK_FILE).unlink()
    with pytest.warns(UserWarning, match=CHECK_FILE):
        rb = load(name, root)
    check_minari(rb, episodes)


@needs_minari
def test_minari_interrupted_build(tmp_path, monkeypatch, toy_minari):
    episodes = toy_minari(tmp_path / "minari")
    root = tmp_path / "cache"
    name = "minari:toy/pendulum/random-v0"
    import torchrl_misa.data.minari_data as minari_data

    def interrupted(*args, **kwargs):
        raise Interrupted  # after TorchRL's conversion, before the fill

    monkeypatch.setattr(minari_data, "fill_from_minari", interrupted)
    with pytest.raises(Interrupted):
        load(name, root)
    monkeypatch.undo()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    check_minari(load(name, root), episodes)


@needs_minari
def test_a_minari_load_waits_while_another_run_holds_the_cache(tmp_path, toy_minari):
    import threading

    from torchrl_misa.data.cache import cache_lock

    episodes = toy_minari(tmp_path / "minari")
    root = tmp_path / "cache"
    cache = root / "toy" / "pendulum" / "random-v0"
    loaded = []
    # flock: two opens of the lock file conflict, in one process too
    with cache_lock(cache):
        thread = threading.Thread(
            target=lambda: loaded.append(load("minari:toy/pendulum/random-v0", root))
        )
        thread.start()
        thread.join(timeout=3)  # a toy set's load takes well under that
        assert thread.is_alive() and not cache.exists()
    thread.join(timeout=120)
    check_minari(loaded[0], episodes)
