"""MISA's data processing: action clip, antmaze/kitchen/adroit rewards, observation norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.transforms import ObservationNorm

from torchrl_misa.data import (
    load_offline_data,
    make_env,
    obs_norm_from_state_dict,
    write_d4rl_hdf5,
)


def toy_arrays(n=64, obs_dim=3, act_dim=1, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "observations": (
            rng.normal(size=(n, obs_dim)) * [1.0, 5.0, 0.1] + [0.0, -3.0, 2.0]
        ).astype("f4")[:, :obs_dim],
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype("f4"),
        "rewards": rng.uniform(-3, 7, n).astype("f4"),
        "terminals": np.zeros(n, bool),
        "timeouts": np.arange(n) % 16 == 15,
        "next_observations": rng.normal(size=(n, obs_dim)).astype("f4"),
    }


def sample_with_rows(rb, arrays):
    batch, info = rb.sample(return_info=True)
    idx = info["index"]
    return batch, (idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx))


def test_clip_actions(tmp_path):
    arrays = toy_arrays()
    arrays["actions"][::4, 0] = 1.0
    arrays["actions"][1::4, 0] = -1.0
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {})
    rb = load_offline_data(
        path, 64, root=tmp_path / "c", clip_actions=0.999
    ).replay_buffer
    batch, idx = sample_with_rows(rb, arrays)
    np.testing.assert_allclose(
        batch["action"].numpy(), np.clip(arrays["actions"][idx], -0.999, 0.999)
    )
    assert batch["action"].abs().max() <= 0.999
    rb = load_offline_data(
        path, 64, root=tmp_path / "c", clip_actions=None
    ).replay_buffer
    batch, idx = sample_with_rows(rb, arrays)
    np.testing.assert_array_equal(batch["action"].numpy(), arrays["actions"][idx])
    # the storage keeps the raw data
    np.testing.assert_array_equal(rb.storage[:]["action"].numpy(), arrays["actions"])


def test_antmaze_rewards(tmp_path):
    arrays = toy_arrays()
    arrays["rewards"] = (np.arange(64) % 2).astype("f4")  # antmaze rewards are 0/1
    path = write_d4rl_hdf5(tmp_path / "antmaze-umaze-v2.hdf5", arrays, {})
    offline = load_offline_data(path, 64, root=tmp_path / "c")
    rb = offline.replay_buffer
    assert offline.reward_rule == "antmaze"
    batch, idx = sample_with_rows(rb, arrays)
    expected = (arrays["rewards"][idx] - 0.5) * 4.0
    np.testing.assert_allclose(batch["next", "reward"].numpy()[:, 0], expected)
    rb = load_offline_data(
        path, 64, root=tmp_path / "c", reward_processing=None
    ).replay_buffer
    batch, idx = sample_with_rows(rb, arrays)
    np.testing.assert_array_equal(
        batch["next", "reward"].numpy()[:, 0], arrays["rewards"][idx]
    )


@pytest.mark.parametrize(
    "name", ["kitchen-mixed-v0", "pen-human-v1", "door_cloned-v1", "relocate-expert-v1"]
)
def test_kitchen_adroit_minmax(tmp_path, name):
    arrays = toy_arrays()
    path = write_d4rl_hdf5(tmp_path / f"{name}.hdf5", arrays, {})
    offline = load_offline_data(path, 64, root=tmp_path / "c")
    rb = offline.replay_buffer
    assert offline.reward_rule == "minmax"
    batch, idx = sample_with_rows(rb, arrays)
    r = arrays["rewards"].astype(np.float64)
    expected = 2.0 * (r[idx] - r.min()) / (r.max() - r.min()) - 1.0
    np.testing.assert_allclose(
        batch["next", "reward"].numpy()[:, 0], expected, rtol=1e-5, atol=1e-6
    )
    # the extremes of the data map to the ends of [-1, 1]
    rb_all = load_offline_data(path, 64, root=tmp_path / "c").replay_buffer
    full = rb_all.transform(rb_all.storage[:].clone())
    assert full["next", "reward"].min().item() == pytest.approx(-1.0, abs=1e-6)
    assert full["next", "reward"].max().item() == pytest.approx(1.0, abs=1e-6)


def test_locomotion_and_generated_files_untouched(tmp_path):
    arrays = toy_arrays()
    for name in ("halfcheetah-medium-v2", "pendulum-medium-replay-v0"):
        path = write_d4rl_hdf5(tmp_path / f"{name}.hdf5", arrays, {})
        assert load_offline_data(path, 16, root=tmp_path / "c").reward_rule == "none"
    with pytest.raises(ValueError, match="reward_processing"):
        load_offline_data(
            path, 16, root=tmp_path / "c", reward_processing="zscore"
        ).replay_buffer


def test_observation_normalisation(tmp_path):
    arrays = toy_arrays(n=200)
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {"env_id": "Pendulum-v1"})
    offline = load_offline_data(
        path, 64, root=tmp_path / "c", normalize_observations=True
    )
    rb = offline.replay_buffer
    mean = arrays["observations"].astype(np.float64).mean(0)
    std = (
        arrays["observations"].astype(np.float64).std(0)
    )  # population std, as numpy's default
    assert isinstance(offline.obs_norm, ObservationNorm)
    np.testing.assert_allclose(offline.obs_norm.loc.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(offline.obs_norm.scale.numpy(), std, rtol=1e-5)
    batch, idx = sample_with_rows(rb, arrays)
    np.testing.assert_allclose(
        batch["observation"].numpy(),
        (arrays["observations"][idx] - mean) / std,
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        batch["next", "observation"].numpy(),
        (arrays["next_observations"][idx] - mean) / std,
        rtol=1e-4,
        atol=1e-5,
    )

    # the statistics travel: saved, restored into a fresh transform, used on the eval env
    saved = offline.obs_norm.state_dict()
    fresh = obs_norm_from_state_dict(saved)
    np.testing.assert_array_equal(fresh.loc.numpy(), offline.obs_norm.loc.numpy())
    env = make_env("Pendulum-v1", obs_norm=fresh)
    raw_env = make_env("Pendulum-v1")
    env.set_seed(3)
    raw_env.set_seed(3)
    obs = env.reset()["observation"].numpy()
    raw = raw_env.reset()["observation"].numpy()
    np.testing.assert_allclose(obs, (raw - mean) / std, rtol=1e-4, atol=1e-5)


def test_constant_feature_does_not_blow_up(tmp_path):
    arrays = toy_arrays()
    arrays["observations"][:, 1] = 4.0
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {})
    offline = load_offline_data(
        path, 8, root=tmp_path / "c", normalize_observations=True
    )
    assert torch.isfinite(offline.replay_buffer.sample()["observation"]).all()
    assert offline.obs_norm.scale[1].item() == pytest.approx(1e-3)


def test_device_argument(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", toy_arrays(), {})
    rb = load_offline_data(
        path, 8, root=tmp_path / "c", device="cpu", normalize_observations=True
    ).replay_buffer
    batch = rb.sample()
    assert batch["observation"].device == torch.device("cpu")
    if torch.cuda.is_available():
        rb = load_offline_data(
            path, 8, root=tmp_path / "c", device="cuda", normalize_observations=True
        ).replay_buffer
        assert rb.sample()["observation"].is_cuda
