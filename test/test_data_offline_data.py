"""load_offline_data: a typed result instead of attributes on TorchRL's buffer; the compatibility function."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

import torchrl_misa.data as data_pkg
from torchrl_misa.data import (
    dataset_env_id,
    load_offline_data,
    normalized_score,
    OfflineData,
    write_d4rl_hdf5,
)

N = 60


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observations": (
            rng.normal(size=(N, 3)) * [1.0, 4.0, 0.5] + [2.0, -1.0, 0.0]
        ).astype("f4"),
        "actions": rng.uniform(-1, 1, (N, 2)).astype("f4"),
        "rewards": rng.uniform(0, 1, N).astype("f4"),
        "terminals": np.zeros(N, bool),
        "timeouts": np.arange(N) % 20 == 19,
        "next_observations": rng.normal(size=(N, 3)).astype("f4"),
    }


META = {"env_id": "Pendulum-v1", "random_return": -1000.0, "expert_return": -200.0}


@pytest.fixture
def toy(tmp_path):
    data = arrays()
    path = write_d4rl_hdf5(tmp_path / "toy.hdf5", data, META)
    return path, data


def test_offline_data_fields(tmp_path, toy):
    path, data = toy
    offline = load_offline_data(
        str(path), 16, normalize_observations=True, root=tmp_path / "c"
    )
    assert isinstance(offline, OfflineData)
    assert offline.name == str(path)
    assert offline.reward_rule == "none"
    with h5py.File(path, "r") as f:  # the file's metadata, read on its own
        meta = {k: f["metadata"][k][()] for k in f["metadata"]}
    assert offline.metadata.keys() == meta.keys()
    assert offline.metadata["env_id"] == meta["env_id"].decode()
    assert offline.metadata["expert_return"] == meta["expert_return"]
    mean = data["observations"].astype(np.float64).mean(0)
    std = data["observations"].astype(np.float64).std(0)
    np.testing.assert_allclose(offline.obs_norm.loc.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(offline.obs_norm.scale.numpy(), std, rtol=1e-5)
    assert offline.obs_norm.in_keys == ["observation"]  # env-side
    batch, info = offline.replay_buffer.sample(return_info=True)
    rows = np.asarray(info["index"])
    np.testing.assert_allclose(
        batch["observation"].numpy(),
        (data["observations"][rows] - mean) / std,
        rtol=1e-4,
        atol=1e-5,
    )
    # nothing hung on TorchRL's buffer
    for attr in ("obs_norm", "reward_rule", "dataset_name"):
        assert not hasattr(offline.replay_buffer, attr), attr
    with pytest.raises(dataclasses.FrozenInstanceError):
        offline.reward_rule = "minmax"


def test_no_normalisation_and_reward_rule_from_the_name(tmp_path):
    data = arrays()
    data["rewards"] = (np.arange(N) % 2).astype("f4")
    path = write_d4rl_hdf5(tmp_path / "antmaze-umaze-v2.hdf5", data)
    offline = load_offline_data(str(path), N, root=tmp_path / "c", clip_actions=None)
    assert offline.obs_norm is None and offline.metadata == {}
    assert offline.reward_rule == "antmaze"
    batch, info = offline.replay_buffer.sample(return_info=True)
    rows = np.asarray(info["index"])
    np.testing.assert_allclose(
        batch["next", "reward"][:, 0].numpy(), (data["rewards"][rows] - 0.5) * 4
    )
    # scores from the name alone: D4RL's antmaze references are 0 and 1
    assert normalized_score(offline, 0.25) == pytest.approx(25.0)


def test_scores_and_env_accept_offline_data(tmp_path, toy):
    path, _ = toy
    offline = load_offline_data(str(path), 4, root=tmp_path / "c")
    # 100 (R - R_random) / (R_expert - R_random), with the file's references
    assert normalized_score(offline, -600.0) == pytest.approx(
        100 * (-600.0 + 1000.0) / 800.0
    )
    assert dataset_env_id(offline) == "Pendulum-v1"


def test_bad_reward_processing_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="reward_processing must be"):
        load_offline_data(str(tmp_path / "absent.hdf5"), 4, reward_processing="minmx")


def test_exported():
    for name in ("OfflineData", "load_offline_data"):
        assert name in data_pkg.__all__ and hasattr(data_pkg, name), name
