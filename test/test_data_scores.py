"""Normalised scores, dataset averages, task names and eval env ids."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from torchrl_misa.data import (
    load_offline_data,
    dataset_average_normalized_score,
    dataset_env_id,
    normalized_score,
    task_family,
    write_d4rl_hdf5,
)

# D4RL's reference returns, typed in from D4RL's infos (MISA_SPEC section 5)
SPEC_TABLE = {
    "halfcheetah-medium-v2": (-280.178953, 12135.0),
    "hopper-medium-replay-v2": (-20.272305, 3234.3),
    "walker2d-medium-expert-v2": (1.629008, 4592.3),
    "ant-medium-v2": (-325.6, 3879.7),
    "antmaze-umaze-diverse-v2": (0.0, 1.0),
    "kitchen-partial-v0": (0.0, 4.0),
    "pen-human-v1": (96.262799, 3076.8331017826877),
    "hammer-cloned-v1": (-274.856578, 12794.134825156867),
    "door-expert-v1": (-56.512833, 2880.5693087298737),
    "relocate-human-v1": (-6.425911, 4233.877797728884),
}


def test_d4rl_reference_numbers():
    assert normalized_score("halfcheetah-medium-v2", 12135.0) == pytest.approx(100.0)
    assert normalized_score("halfcheetah-medium-v2", -280.178953) == pytest.approx(
        0.0, abs=1e-9
    )
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("d4rl:hopper-medium-v2", 3234.3) == pytest.approx(100.0)


@pytest.mark.parametrize("dataset", sorted(SPEC_TABLE))
def test_every_paper_task(dataset):
    low, high = SPEC_TABLE[dataset]
    for ret in (low, high, 0.37 * high + 12.5):
        expected = 100.0 * (ret - low) / (high - low)
        assert normalized_score(dataset, ret) == pytest.approx(
            expected, rel=1e-12, abs=1e-9
        )


def test_arrays_and_tensors():
    rets = np.array([-280.178953, 12135.0, 5000.0])
    expected = 100 * (rets + 280.178953) / (12135.0 + 280.178953)
    np.testing.assert_allclose(
        normalized_score("halfcheetah-medium-v2", rets), expected
    )
    np.testing.assert_allclose(
        normalized_score("halfcheetah-medium-v2", torch.tensor(rets)), expected
    )


def test_names():
    assert task_family("pendulum-medium-replay-v0") is None  # not "pen"
    assert task_family("antmaze-large-play-v2") == "antmaze"
    assert task_family("ant-expert-v2") == "ant"
    assert task_family("minari:mujoco/walker2d/medium-v0") == "walker2d"
    assert dataset_env_id("halfcheetah-medium-v2") == "HalfCheetah-v5"
    assert dataset_env_id("hopper-medium-expert-v2") == "Hopper-v5"
    assert dataset_env_id("walker2d-medium-v2") == "Walker2d-v5"
    assert dataset_env_id("ant-medium-v2") == "Ant-v5"
    with pytest.raises(ValueError, match="metadata/env_id"):
        dataset_env_id("mystery-v0")
    # D4RL's own file names, which do not all contain the id
    kitchen = "/data/kitchen_microwave_kettle_light_slider-v0.hdf5"
    assert normalized_score(kitchen, 2.0) == pytest.approx(50.0)
    antmaze = "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    assert normalized_score(f"d4rl_file:{antmaze}", 0.25) == pytest.approx(25.0)


@pytest.mark.skipif(
    importlib.util.find_spec("gymnasium_robotics") is not None,
    reason="gymnasium-robotics installed",
)
@pytest.mark.parametrize(
    "dataset", ["antmaze-umaze-v2", "kitchen-mixed-v0", "door-human-v1"]
)
def test_robotics_env_needs_package(dataset):
    with pytest.raises(ImportError, match="pip install gymnasium-robotics"):
        dataset_env_id(dataset)


def _file_with_metadata(tmp_path, random_return=-1200.0, expert_return=-150.0):
    # three episodes: 3 steps (time limit), 2 steps (terminal), 4 steps (time limit), 2 steps cut
    rewards = np.array([-1, -2, -3, -10, -20, -5, -5, -5, -5, -7, -7], "f4") * 100
    terminals = np.zeros(11, bool)
    terminals[4] = True
    timeouts = np.zeros(11, bool)
    timeouts[[2, 8]] = True
    n = rewards.size
    arrays = {
        "observations": np.zeros((n, 3), "f4"),
        "actions": np.zeros((n, 1), "f4"),
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": np.zeros((n, 3), "f4"),
    }
    meta = {
        "env_id": "Pendulum-v1",
        "random_return": random_return,
        "expert_return": expert_return,
    }
    return (
        write_d4rl_hdf5(tmp_path / "pendulum-medium-replay-v0.hdf5", arrays, meta),
        arrays,
    )


def test_metadata_normalisation(tmp_path):
    path, _ = _file_with_metadata(tmp_path)
    expected = 100 * (-500.0 + 1200.0) / (-150.0 + 1200.0)
    assert normalized_score(path, -500.0) == pytest.approx(expected)
    assert normalized_score(f"d4rl_file:{path}", -500.0) == pytest.approx(expected)
    rb = load_offline_data(path, 4, root=tmp_path / "c").replay_buffer
    assert normalized_score(rb, -500.0) == pytest.approx(expected)
    assert dataset_env_id(path) == "Pendulum-v1"
    assert dataset_env_id(rb) == "Pendulum-v1"


def test_dataset_average(tmp_path):
    path, arrays = _file_with_metadata(tmp_path)
    # brute force: walk the rows, close an episode at every terminal or timeout
    returns, acc = [], 0.0
    for r, term, out in zip(arrays["rewards"], arrays["terminals"], arrays["timeouts"]):
        acc += float(r)
        if term or out:
            returns.append(acc)
            acc = 0.0
    assert returns == [
        -600.0,
        -3000.0,
        -2000.0,
    ]  # the trailing cut run is not an episode
    expected = np.mean([100 * (g + 1200.0) / 1050.0 for g in returns])
    assert dataset_average_normalized_score(path) == pytest.approx(expected)
    rb = load_offline_data(path, 4, root=tmp_path / "c").replay_buffer
    assert dataset_average_normalized_score(rb) == pytest.approx(expected)


def test_missing_reference(tmp_path):
    path, _ = _file_with_metadata(tmp_path)
    import h5py

    with h5py.File(path, "a") as f:
        del f["metadata/expert_return"]
    path.rename(tmp_path / "toy.hdf5")
    with pytest.raises(ValueError, match="metadata/expert_return"):
        normalized_score(tmp_path / "toy.hdf5", 1.0)
