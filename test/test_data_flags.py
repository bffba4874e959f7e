"""Stored layouts: numeric episode-end flags, [N, 1] and [N] columns, files with no episode end."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest
import torch

from torchrl_misa.data import (
    load_offline_data,
    DatasetFormatError,
    dataset_average_normalized_score,
    dataset_episode_returns,
    write_d4rl_hdf5,
)

N = 30


def arrays(seed=0):
    """Three episodes: a terminal at row 4, time limits at rows 14 and 29."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(N, bool)
    terminals[4] = True
    timeouts = np.zeros(N, bool)
    timeouts[[14, 29]] = True
    return {
        "observations": rng.normal(size=(N, 3)).astype("f4"),
        "actions": rng.uniform(-1, 1, (N, 2)).astype("f4"),
        "rewards": rng.normal(size=N).astype("f4"),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(N, 3)).astype("f4"),
    }


def write_raw(path, data):
    """Writes ``data`` as given (no dtype or shape conversion, unlike write_d4rl_hdf5)."""
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f[key] = value
        f["metadata/random_return"] = -10.0
        f["metadata/expert_return"] = 10.0
    return path


def load(path, root):
    return load_offline_data(path, 8, root=root, clip_actions=None).replay_buffer


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "float32", "float64"])
def test_numeric_flags_load_like_bool(tmp_path, dtype, storage_matches_file):
    data = arrays()
    reference = load(write_raw(tmp_path / "bool.hdf5", data), tmp_path / "c")
    numeric = dict(data)
    for key in ("terminals", "timeouts"):
        numeric[key] = data[key].astype(dtype)
    rb = load(write_raw(tmp_path / f"{dtype}.hdf5", numeric), tmp_path / "c")
    storage = rb.storage[:]
    for key in ("done", "terminated", "truncated"):
        assert storage["next", key].dtype == torch.bool, key
    assert (storage == reference.storage[:]).all()
    storage_matches_file(rb, data)


@pytest.mark.parametrize(
    "key,values,shown",
    [
        ("terminals", np.where(np.arange(N) == 4, 0.5, 0.0), "0.5"),
        ("timeouts", np.where(np.arange(N) == 14, np.nan, 0.0), "nan"),
        ("terminals", np.where(np.arange(N) == 4, 2, 0), "2"),
        ("timeouts", np.where(np.arange(N) == 14, -1, 0).astype("i1"), "-1"),
    ],
)
def test_other_flag_values_refused(tmp_path, key, values, shown):
    data = arrays()
    data[key] = values
    path = write_raw(tmp_path / "bad.hdf5", data)
    with pytest.raises(DatasetFormatError, match=f"'{key}' holds {shown}"):
        load(path, tmp_path / "c")
    with pytest.raises(DatasetFormatError, match=f"'{key}' holds {shown}"):
        dataset_average_normalized_score(path)
    with pytest.raises(DatasetFormatError, match=f"'{key}' holds {shown}"):
        write_d4rl_hdf5(tmp_path / "w.hdf5", data)


def test_column_vectors_of_scalars_load_like_flat(tmp_path, storage_matches_file):
    data = arrays()
    reference = load(write_raw(tmp_path / "flat.hdf5", data), tmp_path / "c")
    columns = dict(data)
    for key in ("rewards", "terminals", "timeouts"):
        columns[key] = data[key][:, None]
    rb = load(write_raw(tmp_path / "columns.hdf5", columns), tmp_path / "c")
    assert rb.storage[:]["next", "reward"].shape == (N, 1)
    assert (rb.storage[:] == reference.storage[:]).all()
    storage_matches_file(rb, data)


def test_wider_scalar_columns_refused(tmp_path):
    data = arrays()
    data["rewards"] = np.stack([data["rewards"]] * 2, -1)
    with pytest.raises(DatasetFormatError, match=r"'rewards' has shape \(30, 2\)"):
        load(write_raw(tmp_path / "bad.hdf5", data), tmp_path / "c")


@pytest.mark.parametrize("key", ["actions", "observations"])
def test_one_dimensional_columns_read_as_one_feature(tmp_path, key):
    data = arrays()
    data["actions"] = data["actions"][:, :1]
    data["observations"] = data["observations"][:, :1]
    data["next_observations"] = data["next_observations"][:, :1]
    flat = dict(data)
    flat[key] = data[key][:, 0]
    if key == "observations":
        flat["next_observations"] = data["next_observations"][:, 0]
    with pytest.warns(UserWarning, match=f"'{key}'.*stored as \\[N\\]"):
        rb = load(write_raw(tmp_path / "flat.hdf5", flat), tmp_path / "c")
    reference = load(write_raw(tmp_path / "column.hdf5", data), tmp_path / "c")
    assert (rb.storage[:] == reference.storage[:]).all()
    batch = rb.sample()
    assert batch["action"].shape == (8, 1) and batch["observation"].shape == (8, 1)


def test_no_episode_end(tmp_path):
    data = arrays()
    data["terminals"][:] = False
    data["timeouts"][:] = False
    path = write_raw(tmp_path / "endless.hdf5", data)
    with pytest.warns(UserWarning, match="no episode end"):
        rb = load(path, tmp_path / "c")
    # every transition still bootstraps from its stored next state
    np.testing.assert_array_equal(
        rb.storage[:]["next", "observation"].numpy(), data["next_observations"]
    )
    for dataset in (path, rb):
        with pytest.warns(UserWarning, match="no complete episode"):
            assert dataset_episode_returns(dataset).size == 0
        with pytest.warns(UserWarning, match="undefined"):
            assert np.isnan(dataset_average_normalized_score(dataset))


def test_trailing_unfinished_episode_is_not_averaged(tmp_path):
    data = arrays()
    data["timeouts"][29] = False  # rows 15..29 never end
    path = write_raw(tmp_path / "x.hdf5", data)
    r = data["rewards"].astype(np.float64)
    expected = [r[:5].sum(), r[5:15].sum()]  # typed in from the layout above
    np.testing.assert_allclose(dataset_episode_returns(path), expected, rtol=1e-6)
    score = np.mean([100 * (g + 10.0) / 20.0 for g in expected])
    assert dataset_average_normalized_score(path) == pytest.approx(score)


def test_describe_without_episode_end(tmp_path):
    from torchrl_misa.data.describe import describe

    data = arrays()
    data["terminals"][:] = False
    data["timeouts"][:] = False
    with pytest.warns(UserWarning, match="no complete episode"):
        text = describe(write_raw(tmp_path / "endless.hdf5", data))
    assert "| 30 / 0 (0 terminals, 0 timeouts) |" in text
    assert "undefined (no complete episode)" in text


def test_describe_with_reference_returns(tmp_path):
    # a set made with --reference-returns: its summary has no measured stds
    import json

    from torchrl_misa.data.describe import describe

    run = tmp_path / "checkpoints" / "toy-seed0"
    run.mkdir(parents=True)
    summary = {"final_eval_time_s": 1.5, "expert_return_std": None}
    (run / "summary.json").write_text(json.dumps({**summary, "random_return_std": 2.0}))
    meta = {"policy_checkpoint": str(run / "policy_step00000010.pt")}
    meta.update(random_return=-10.0, expert_return=10.0)
    text = describe(write_d4rl_hdf5(tmp_path / "toy.hdf5", arrays(), meta))
    assert "| final evaluations time (s) | 1.5 |" in text
    assert "std" not in text


# -- Minari --------------------------------------------------------------------
@pytest.mark.skipif(
    importlib.util.find_spec("minari") is None, reason="minari not installed"
)
@pytest.mark.parametrize("flags", ["float64", "int64", "half"])
def test_minari_numeric_flags(tmp_path, toy_minari, flags):
    half = flags == "half"  # episode ends flagged 0.5, stored as float64
    episodes = toy_minari(
        tmp_path / "minari",
        flags="float64" if half else flags,
        flag_value=0.5 if half else 1.0,
    )
    name = "minari:toy/pendulum/random-v0"
    if half:
        with pytest.raises(DatasetFormatError, match="'terminations' holds 0.5"):
            load(name, tmp_path / "cache")
        return
    data = load(name, tmp_path / "cache").storage[:]
    done = np.zeros(12, bool)
    done[[4, 11]] = True
    for key in ("done", "terminated", "truncated"):
        assert data["next", key].dtype == torch.bool, key
    np.testing.assert_array_equal(data["next", "done"].numpy()[:, 0], done)
    np.testing.assert_array_equal(
        data["next", "terminated"].numpy()[:, 0], np.eye(12, dtype=bool)[4]
    )
    np.testing.assert_array_equal(
        data["next", "truncated"].numpy()[:, 0], np.eye(12, dtype=bool)[11]
    )
    np.testing.assert_array_equal(
        data["observation"].numpy(),
        np.concatenate([e.observations[:-1] for e in episodes]),
    )
