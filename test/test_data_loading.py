"""Loading offline datasets: local D4RL-layout files, D4RL ids offline, Minari, bad files."""

from __future__ import annotations

import importlib.util
import socket
import time
import urllib.request

import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data.datasets import load_dataset
from torchrl.data.datasets.d4rl import D4RLExperienceReplay
from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS

import torchrl_misa  # noqa: F401  (registers the d4rl_file prefix)
from torchrl_misa.data import (
    check_transitions,
    D4RLFileExperienceReplay,
    DatasetFormatError,
    DatasetUnavailableError,
    load_offline_data,
    make_env,
    OfflineD4RLExperienceReplay,
    write_d4rl_hdf5,
)

KEYS = [
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
]


def toy_arrays(n=40, obs_dim=3, act_dim=2, seed=0, episode=10):
    """Random transitions with a terminal at row 4 and time limits every ``episode`` rows."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    terminals[4] = True
    timeouts = (np.arange(n) % episode == episode - 1) & ~terminals
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype("f4"),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype("f4"),
        "rewards": rng.normal(size=n).astype("f4"),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(n, obs_dim)).astype("f4"),
    }


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection raises."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_handmade_file_roundtrip(tmp_path, storage_matches_file):
    arrays = toy_arrays()
    path = write_d4rl_hdf5(tmp_path / "toy.hdf5", arrays, {"env_id": "Pendulum-v1"})
    rb = load_dataset(f"d4rl_file:{path}", batch_size=16, root=tmp_path / "cache")
    assert isinstance(rb, D4RLExperienceReplay)
    storage_matches_file(rb, read_h5(path))
    # second load comes from the memory-mapped cache and is the same
    again = load_dataset(f"d4rl_file:{path}", batch_size=16, root=tmp_path / "cache")
    storage_matches_file(again, read_h5(path))


def test_episode_boundaries_from_a_terminating_env(
    tmp_path, storage_matches_file, dataset_tool
):
    # Hopper falls (terminated) and is cut at 30 steps (truncated): both kinds of ends
    tool = dataset_tool.generate_dataset
    env_fn = lambda: make_env("Hopper-v5", max_episode_steps=30)  # noqa: E731
    td = tool.collect_episodes(env_fn, None, 300, seed=0)
    arrays = tool.to_d4rl_arrays(td)
    assert arrays["terminals"].any() and arrays["timeouts"].any()
    assert not (arrays["terminals"] & arrays["timeouts"]).any()
    ends = arrays["terminals"] | arrays["timeouts"]
    assert ends[-1]
    # within an episode the next observation is the following row's observation
    inside = ~ends[:-1]
    np.testing.assert_array_equal(
        arrays["next_observations"][:-1][inside], arrays["observations"][1:][inside]
    )
    # episode lengths: at most 30, exactly 30 when cut by the time limit
    starts = np.r_[0, np.flatnonzero(ends)[:-1] + 1]
    lengths = np.flatnonzero(ends) + 1 - starts
    assert lengths.max() <= 30
    np.testing.assert_array_equal(lengths[arrays["timeouts"][ends]], 30)
    path = write_d4rl_hdf5(tmp_path / "hop.hdf5", arrays, {"env_id": "Hopper-v5"})
    rb = load_offline_data(
        path, 64, root=tmp_path / "c", clip_actions=None
    ).replay_buffer
    storage_matches_file(rb, read_h5(path))


def test_samples_keys_shapes_and_values(tmp_path):
    arrays = toy_arrays(n=50, obs_dim=4, act_dim=3)
    arrays["actions"][:3] = [
        [1.0, -1.0, 0.9995]
    ] * 3  # on the bound: allowed, then clipped
    path = write_d4rl_hdf5(tmp_path / "toy.hdf5", arrays, {"env_id": "Pendulum-v1"})
    rb = load_offline_data(str(path), 32, root=tmp_path / "c").replay_buffer
    batch, info = rb.sample(return_info=True)
    idx = info["index"]
    idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
    for key in KEYS:
        assert key in batch.keys(True), key
    assert (
        batch["observation"].shape == (32, 4)
        and batch["observation"].dtype == torch.float32
    )
    assert batch["action"].shape == (32, 3)
    for key in ("reward", "done", "terminated", "truncated"):
        assert batch["next", key].shape == (32, 1)
    assert batch["next", "done"].dtype == torch.bool
    np.testing.assert_array_equal(
        batch["observation"].numpy(), arrays["observations"][idx]
    )
    np.testing.assert_allclose(
        batch["action"].numpy(), np.clip(arrays["actions"][idx], -0.999, 0.999)
    )
    np.testing.assert_array_equal(
        batch["next", "reward"].numpy()[:, 0], arrays["rewards"][idx]
    )
    done = arrays["terminals"] | arrays["timeouts"]
    np.testing.assert_array_equal(batch["next", "done"].numpy()[:, 0], done[idx])


def test_plain_path_and_prefix_are_the_same(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "toy.hdf5", toy_arrays(), {})
    a = load_offline_data(str(path), 4, root=tmp_path / "c").replay_buffer
    b = load_offline_data(f"d4rl_file:{path}", 4, root=tmp_path / "c").replay_buffer
    assert (a.storage[:] == b.storage[:]).all()


def test_d4rl_id_downloaded_then_read_from_the_cache_offline(
    tmp_path, d4rl_server, storage_matches_file
):
    arrays = toy_arrays(n=30, obs_dim=11, act_dim=3)
    urls = d4rl_server(arrays)
    root = tmp_path / "torchrl_cache"
    rb = OfflineD4RLExperienceReplay("hopper-medium-v2", batch_size=8, root=root)
    storage_matches_file(rb, arrays)
    assert urls == [D4RL_DATASETS["hopper-medium-v2"]]
    assert (root / "hopper-medium-v2").is_dir()
    d4rl_server(None)  # now only TorchRL's cache is left, and no network
    rb = load_offline_data("hopper-medium-v2", 8, root=root).replay_buffer
    storage_matches_file(rb, arrays)
    assert rb.sample()["observation"].shape == (8, 11)


def test_d4rl_id_no_cache_no_network(tmp_path, monkeypatch, no_network):
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as err:
        load_offline_data("halfcheetah-medium-v2", 8, root=tmp_path / "c").replay_buffer
    msg = str(err.value)
    assert "could not be downloaded" in msg and "d4rl_file:" in msg and "demo" in msg
    assert "network disabled in this test" in msg  # the cause is shown
    assert "halfcheetah_medium-v2.hdf5" in msg  # says which file to bring
    assert (
        time.monotonic() - start < 60
    )  # no long hang (loose bound, not a timing test)
    for load, name in (
        (load_offline_data, "d4rl:halfcheetah-medium-v2"),
        (OfflineD4RLExperienceReplay, "halfcheetah-medium-v2"),
    ):
        with pytest.raises(DatasetUnavailableError, match="d4rl_file:"):
            load(name, 8, root=tmp_path / "c")


def test_unknown_d4rl_id(tmp_path):
    with pytest.raises(KeyError, match="halfcheetah-medium-v2"):
        load_offline_data("halfcheetah-medum-v2", 8, root=tmp_path).replay_buffer


@pytest.mark.skipif(
    importlib.util.find_spec("minari") is not None, reason="minari installed"
)
def test_minari_missing_package(tmp_path):
    with pytest.raises(ImportError, match="pip install minari") as err:
        load_offline_data(
            "minari:mujoco/hopper/medium-v0", 8, root=tmp_path
        ).replay_buffer
    assert "d4rl_file:" in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("minari") is None, reason="minari not installed"
)
def test_minari_offline(tmp_path, monkeypatch, no_network, toy_minari):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with pytest.raises(DatasetUnavailableError, match="minari download"):
        load_offline_data(
            "minari:mujoco/hopper/medium-v0", 8, root=tmp_path
        ).replay_buffer

    # a dataset in Minari's local folder loads with no network
    episodes = toy_minari(tmp_path / "minari")
    rb = load_offline_data(
        "minari:toy/pendulum/random-v0", 4, root=tmp_path / "cache", clip_actions=None
    ).replay_buffer
    data = rb.storage[:]
    obs = np.concatenate([e.observations[:-1] for e in episodes])
    next_obs = np.concatenate([e.observations[1:] for e in episodes])
    np.testing.assert_array_equal(data["observation"].numpy(), obs)
    np.testing.assert_array_equal(data["next", "observation"].numpy(), next_obs)
    np.testing.assert_array_equal(
        data["action"].numpy(), np.concatenate([e.actions for e in episodes])
    )
    np.testing.assert_allclose(
        data["next", "reward"].numpy()[:, 0],
        np.concatenate([e.rewards for e in episodes]),
    )
    done = np.zeros(12, bool)
    done[[4, 11]] = True
    np.testing.assert_array_equal(data["next", "done"].numpy()[:, 0], done)
    np.testing.assert_array_equal(
        data["next", "terminated"].numpy()[:, 0], np.eye(12, dtype=bool)[4]
    )
    assert rb.sample()["next", "reward"].dtype == torch.float32


# -- bad files ---------------------------------------------------------------
@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals"])
def test_missing_key_refused(tmp_path, key):
    arrays = toy_arrays()
    del arrays[key]
    path = write_d4rl_hdf5(tmp_path / "bad.hdf5", arrays, {})
    with pytest.raises(DatasetFormatError, match=f"'{key}' is missing"):
        load_dataset(f"d4rl_file:{path}", batch_size=4, root=tmp_path / "c")


@pytest.mark.parametrize("key", ["rewards", "timeouts", "next_observations", "actions"])
def test_length_mismatch_refused(tmp_path, key):
    arrays = toy_arrays()
    arrays[key] = arrays[key][:-3]
    path = write_d4rl_hdf5(tmp_path / "bad.hdf5", arrays, {})
    with pytest.raises(DatasetFormatError, match=f"'{key}' has 37 rows"):
        load_offline_data(path, 4, root=tmp_path / "c").replay_buffer


@pytest.mark.parametrize(
    "key,value",
    [
        ("observations", np.nan),
        ("rewards", np.inf),
        ("next_observations", -np.inf),
        ("actions", np.nan),
    ],
)
def test_non_finite_refused(tmp_path, key, value):
    arrays = toy_arrays()
    arrays[key][7] = value
    path = write_d4rl_hdf5(tmp_path / "bad.hdf5", arrays, {})
    with pytest.raises(DatasetFormatError, match=f"'{key}' holds NaN or inf"):
        load_offline_data(path, 4, root=tmp_path / "c").replay_buffer


def test_out_of_bound_actions_refused(tmp_path):
    arrays = toy_arrays()
    arrays["actions"][5, 1] = 1.5
    path = write_d4rl_hdf5(tmp_path / "bad.hdf5", arrays, {})
    with pytest.raises(
        DatasetFormatError, match=r"'actions' has values outside \[-1.0, 1.0\].*row 5"
    ):
        load_offline_data(path, 4, root=tmp_path / "c").replay_buffer


def test_not_hdf5_and_missing_file_refused(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("observations,actions\n1,2\n")
    with pytest.raises(DatasetFormatError, match="not an HDF5 file"):
        load_dataset(f"d4rl_file:{path}", batch_size=4, root=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D4RLFileExperienceReplay(tmp_path / "nope.hdf5", 4, root=tmp_path / "c")


def test_check_transitions_on_buffers():
    n = 6
    td = TensorDict(
        {
            "observation": torch.zeros(n, 2),
            "action": torch.zeros(n, 1),
            "next": {"observation": torch.zeros(n, 2), "reward": torch.zeros(n, 1)},
        },
        [n],
    )
    check_transitions(td, "ok")
    bad = td.clone()
    bad["next", "reward"][2] = float("nan")
    with pytest.raises(DatasetFormatError, match="'next', 'reward'"):
        check_transitions(bad, "buf")
    bad = td.clone()
    bad["action"][1] = -1.01
    with pytest.raises(DatasetFormatError, match="outside"):
        check_transitions(bad, "buf")
