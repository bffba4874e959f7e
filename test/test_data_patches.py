"""Each fix to TorchRL's dataset classes: the bug with the stock class, the fix with ours.

Both D4RL classes download their file; here the download returns a local
D4RL-layout file instead (no network), so each runs end to end.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchrl.data.datasets.d4rl as torchrl_d4rl
import urllib.request
from tensordict import TensorDict
from torchrl.data.datasets import D4RLExperienceReplay

from torchrl_misa.data import write_d4rl_hdf5
from torchrl_misa.data import OfflineD4RLExperienceReplay
from torchrl_misa.data.d4rl import repeat_last_row, unknown_next_observation

N = 30
TERMINAL, TIME_LIMITS = 4, (14, 29)  # rows ending an episode; 29 is the file's last


def arrays():
    """Three episodes: a terminal at row 4, time limits at rows 14 and 29."""
    rng = np.random.default_rng(0)
    terminals = np.zeros(N, bool)
    terminals[TERMINAL] = True
    timeouts = np.zeros(N, bool)
    timeouts[list(TIME_LIMITS)] = True
    return {
        "observations": rng.normal(size=(N, 3)).astype("f4"),
        "actions": rng.uniform(-1, 1, (N, 2)).astype("f4"),
        "rewards": rng.normal(size=N).astype("f4"),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(N, 3)).astype("f4"),
    }


@pytest.fixture
def d4rl_download(tmp_path, monkeypatch):
    """Both classes' D4RL download returns a local file; returns the file's arrays."""
    data = arrays()
    # no metadata group: tensordict's HDF5 reader of the stock class cannot read scalars
    path = write_d4rl_hdf5(tmp_path / "hopper_medium-v2.hdf5", data)

    def local_copy(url, folder):
        return str(shutil.copy(path, Path(folder) / path.name))

    monkeypatch.setattr(torchrl_d4rl, "_download_dataset_from_url", local_copy)
    monkeypatch.setattr(
        urllib.request, "urlretrieve", lambda url, dest: shutil.copy(path, dest)
    )
    # the stock class sets this variable for good: keep it to the test
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "unused"))
    with h5py.File(path, "r") as f:  # what is in the file, read on its own
        return {k: f[k][()] for k in f.keys()}


def load(cls, root, **kwargs):
    rb = cls("hopper-medium-v2", 8, root=root, direct_download=True, **kwargs)
    return rb.storage[:]


# -- the last transition -----------------------------------------------------
def test_stock_d4rl_drops_the_last_transition(tmp_path, d4rl_download):
    file = d4rl_download
    stored = load(D4RLExperienceReplay, tmp_path / "stock")
    assert stored.shape[0] == N - 1
    np.testing.assert_array_equal(stored["action"].numpy(), file["actions"][:-1])


def test_last_transition_kept(tmp_path, d4rl_download):
    file = d4rl_download
    stored = load(OfflineD4RLExperienceReplay, tmp_path / "fixed")
    assert stored.shape[0] == N
    np.testing.assert_array_equal(stored["observation"].numpy(), file["observations"])
    np.testing.assert_array_equal(stored["action"].numpy(), file["actions"])
    np.testing.assert_array_equal(
        stored["next", "reward"][:, 0].numpy(), file["rewards"]
    )
    done = file["terminals"] | file["timeouts"]
    np.testing.assert_array_equal(stored["next", "done"][:, 0].numpy(), done)
    # rows inside episodes keep the file's next observation, as the stock class does
    inside = ~done
    np.testing.assert_array_equal(
        stored["next", "observation"][inside].numpy(),
        file["next_observations"][inside],
    )


def test_repeat_last_row_of_rows_read_without_batch_size():
    rows = TensorDict(
        {
            "observations": torch.arange(6.0).reshape(3, 2),
            "next_observations": torch.arange(6.0).reshape(3, 2) + 1,
        },
        batch_size=[],  # as an HDF5 file may be read
    )
    padded = repeat_last_row(rows)
    assert padded.batch_size == (4,)
    expected = np.array([[1, 2], [3, 4], [5, 6], [5, 6]], dtype="f4")
    np.testing.assert_array_equal(padded["next_observations"].numpy(), expected)
    no_next = TensorDict(observations=torch.zeros(3, 2), batch_size=[3])
    assert repeat_last_row(no_next) is no_next  # no next_observations: unchanged


# -- the next observation at time limits -------------------------------------
def test_stock_d4rl_zeroes_the_next_state_at_time_limits(tmp_path, d4rl_download):
    file = d4rl_download
    stored = load(D4RLExperienceReplay, tmp_path / "stock")
    row = TIME_LIMITS[0]
    assert stored["next", "truncated"][row].item()
    assert np.abs(file["next_observations"][row]).min() > 0
    np.testing.assert_array_equal(stored["next", "observation"][row].numpy(), 0)


def test_time_limit_next_state_kept(tmp_path, d4rl_download):
    file = d4rl_download
    root = tmp_path / "fixed"
    for _ in range(2):  # converted, then read back from the cache
        stored = load(OfflineD4RLExperienceReplay, root)
        row = TIME_LIMITS[0]
        np.testing.assert_array_equal(
            stored["next", "observation"][row].numpy(), file["next_observations"][row]
        )
        # a terminal next state is unknown (never bootstrapped from): zeros
        np.testing.assert_array_equal(
            stored["next", "observation"][TERMINAL].numpy(), 0
        )


def test_both_d4rl_fixes_together(tmp_path, d4rl_download, storage_matches_file):
    file = d4rl_download
    for split_trajs in (False, True):
        rb = OfflineD4RLExperienceReplay(
            "hopper-medium-v2",
            8,
            root=tmp_path / str(split_trajs),
            split_trajs=split_trajs,
        )
        if not split_trajs:
            storage_matches_file(rb, file)
            continue
        # split into episodes: the same transitions, the padding left out
        stored = rb.storage[:]
        mask = stored["mask"]
        np.testing.assert_array_equal(stored["action"][mask].numpy(), file["actions"])
        time_limit = TIME_LIMITS[0]
        np.testing.assert_array_equal(
            stored["next", "observation"][mask][time_limit].numpy(),
            file["next_observations"][time_limit],
        )


def test_unknown_next_observation_mask():
    done = torch.zeros(6, 1, dtype=torch.bool)
    done[[1, 3, 5]] = True
    terminated = torch.zeros(6, 1, dtype=torch.bool)
    terminated[3] = True
    data = TensorDict({"next": {"done": done, "terminated": terminated}}, [6])
    with_next = unknown_next_observation(data, has_next_observations=True)
    without = unknown_next_observation(data, has_next_observations=False)
    assert with_next.tolist() == [False, False, False, True, False, False]
    assert without.tolist() == [False, True, False, True, False, True]


# -- Minari: zeros on the first conversion -------------------------------------
needs_minari = pytest.mark.skipif(
    importlib.util.find_spec("minari") is None, reason="minari not installed"
)


def assert_holds_episodes(stored, episodes):
    obs = np.concatenate([e.observations[:-1] for e in episodes])
    next_obs = np.concatenate([e.observations[1:] for e in episodes])
    np.testing.assert_array_equal(stored["observation"].numpy(), obs)
    np.testing.assert_array_equal(stored["next", "observation"].numpy(), next_obs)
    np.testing.assert_array_equal(
        stored["action"].numpy(), np.concatenate([e.actions for e in episodes])
    )
    np.testing.assert_allclose(
        stored["next", "reward"][:, 0].numpy(),
        np.concatenate([e.rewards for e in episodes]),
    )
    done = np.zeros(12, bool)
    done[[4, 11]] = True
    np.testing.assert_array_equal(stored["next", "done"][:, 0].numpy(), done)
    np.testing.assert_array_equal(
        stored["next", "terminated"][:, 0].numpy(), np.eye(12, dtype=bool)[4]
    )
    np.testing.assert_array_equal(stored["episode"].numpy(), [0] * 5 + [1] * 7)


@needs_minari
def test_stock_minari_stores_zeros(tmp_path, toy_minari):
    from torchrl.data.datasets import MinariExperienceReplay

    episodes = toy_minari(tmp_path / "minari")
    rb = MinariExperienceReplay(
        "toy/pendulum/random-v0", 4, root=tmp_path / "c", load_from_local_minari=True
    )
    stored = rb.storage[:]
    assert stored.shape[0] == 12
    assert np.abs(np.concatenate([e.observations for e in episodes])).min() > 0
    np.testing.assert_array_equal(stored["observation"].numpy(), 0)
    np.testing.assert_array_equal(stored["next", "done"].numpy(), False)


@needs_minari
def test_minari_filled_from_local_folder(tmp_path, toy_minari):
    from torchrl_misa.data.minari_data import MinariFilledExperienceReplay

    episodes = toy_minari(tmp_path / "minari")
    root = tmp_path / "c"
    rb = MinariFilledExperienceReplay(
        "toy/pendulum/random-v0", 4, root=root, load_from_local_minari=True
    )
    assert_holds_episodes(rb.storage[:], episodes)
    # what reached the disk is the data too: a later load reads it
    assert_holds_episodes(
        TensorDict.load_memmap(root / "toy" / "pendulum" / "random-v0"), episodes
    )


@needs_minari
def test_minari_filled_after_a_download(tmp_path, monkeypatch, toy_minari):
    import minari

    from torchrl_misa.data.minari_data import MinariFilledExperienceReplay

    # the "server": a Minari folder elsewhere; a download copies from it
    server = tmp_path / "server"
    episodes = toy_minari(server)
    own = tmp_path / "own"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(own))

    def download_dataset(dataset_id, **kwargs):
        target = Path(minari.storage.get_dataset_path()) / dataset_id
        shutil.copytree(server / dataset_id, target)

    monkeypatch.setattr(minari, "download_dataset", download_dataset)
    rb = MinariFilledExperienceReplay("toy/pendulum/random-v0", 4, root=tmp_path / "c")
    assert_holds_episodes(rb.storage[:], episodes)
    assert not own.exists()  # as the stock class, the download was temporary
