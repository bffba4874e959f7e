"""Fixtures shared by the test files."""

import importlib
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from torchrl_misa.data import write_d4rl_hdf5


def _tiny_d4rl_file(
    path: Path, obs_dim: int, act_dim: int, env_id: str, n: int = 400
) -> Path:
    """A D4RL-layout file of random transitions: episodes of 50 steps, one terminal."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[min(123, n - 1)] = True
    data = {
        "observations": obs[:-1],
        "next_observations": obs[1:],
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": (np.arange(n) % 50) == 49,
    }
    meta = {"env_id": env_id, "random_return": -100.0, "expert_return": 100.0}
    return write_d4rl_hdf5(path, data, meta)


@pytest.fixture(scope="session")
def tiny_d4rl_file():
    """``tiny_d4rl_file(path, obs_dim, act_dim, env_id, n=400)`` writes a small D4RL file."""
    return _tiny_d4rl_file


def _check_storage_matches_file(rb, arrays) -> None:
    """Every stored transition equals the file's row, flags and boundaries included."""
    data = rb.storage[:]
    n = len(arrays["rewards"])
    assert len(rb) == n
    term = arrays["terminals"].astype(bool)
    trunc = arrays["timeouts"].astype(bool)
    np.testing.assert_array_equal(data["observation"].numpy(), arrays["observations"])
    np.testing.assert_array_equal(data["action"].numpy(), arrays["actions"])
    np.testing.assert_array_equal(
        data["next", "reward"].numpy()[:, 0], arrays["rewards"]
    )
    np.testing.assert_array_equal(data["next", "terminated"].numpy()[:, 0], term)
    np.testing.assert_array_equal(data["next", "truncated"].numpy()[:, 0], trunc)
    np.testing.assert_array_equal(data["next", "done"].numpy()[:, 0], term | trunc)
    next_obs = data["next", "observation"].numpy()
    # a terminal next state is never used (no bootstrap): TorchRL zeroes it
    np.testing.assert_array_equal(next_obs[term], 0 * arrays["next_observations"][term])
    np.testing.assert_array_equal(next_obs[~term], arrays["next_observations"][~term])


@pytest.fixture(scope="session")
def storage_matches_file():
    """``storage_matches_file(rb, arrays)`` asserts a loaded buffer equals the file's arrays."""
    return _check_storage_matches_file


@pytest.fixture
def d4rl_server(monkeypatch, tmp_path):
    """``d4rl_server(arrays)``: D4RL downloads (``urlretrieve``) get a file of ``arrays``.

    ``d4rl_server(None)``: downloads fail as without network. Returns the URLs asked for.
    """
    urls = []

    def serve(arrays):
        served = None
        if arrays is not None:
            served = write_d4rl_hdf5(tmp_path / "served.hdf5", arrays, {})

        def urlretrieve(url, dest):
            urls.append(url)
            if served is None:
                raise OSError("network disabled in this test")
            Path(dest).write_bytes(served.read_bytes())

        monkeypatch.setattr(urllib.request, "urlretrieve", urlretrieve)
        return urls

    return serve


@pytest.fixture
def toy_minari(monkeypatch):
    """``toy_minari(folder, name=..., flags=bool, flag_value=1.0)`` writes a toy Minari dataset.

    Two episodes, 5 steps ending terminal and 7 cut by a time limit, in the
    Minari folder ``folder`` (MINARI_DATASETS_PATH from then on); an episode's
    end flag is ``flag_value`` stored as ``flags``. Returns the episodes.
    """

    def make(folder, name="toy/pendulum/random-v0", flags=bool, flag_value=1.0):
        import minari
        from minari.data_collector.episode_buffer import EpisodeBuffer

        monkeypatch.setenv("MINARI_DATASETS_PATH", str(folder))
        rng = np.random.default_rng(0)
        episodes = []
        for ep, (steps, terminal) in enumerate([(5, True), (7, False)]):
            end = (np.eye(steps)[-1] * flag_value).astype(flags)
            never = np.zeros(steps, end.dtype)
            episodes.append(
                EpisodeBuffer(
                    id=ep,
                    observations=rng.normal(size=(steps + 1, 3)).astype("f4"),
                    actions=rng.uniform(-1, 1, (steps, 1)).astype("f4"),
                    rewards=rng.normal(size=steps),
                    terminations=end if terminal else never,
                    truncations=never if terminal else end,
                    infos={},
                )
            )
        with pytest.warns(UserWarning):  # minari asks for an author, a code link...
            minari.create_dataset_from_buffers(
                name, episodes, env="Pendulum-v1", description="toy"
            )
        return episodes

    return make


@pytest.fixture(scope="session")
def misa_script():
    """The training script's modules: ``misa_script.misa_offline``, ``.utils``, ``.checkpoint``."""
    folder = str(Path(__file__).resolve().parents[1] / "sota-implementations" / "misa")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the script's modules import each other by name
    names = ("misa_offline", "utils", "checkpoint")
    return types.SimpleNamespace(**{n: importlib.import_module(n) for n in names})


@pytest.fixture(scope="session")
def dataset_tool():
    """The dataset tool's modules: ``dataset_tool.generate_dataset``, ``.behaviour_agent``."""
    folder = str(Path(__file__).resolve().parents[1] / "tools")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the tool's modules import each other by name
    names = ("generate_dataset", "behaviour_agent")
    return types.SimpleNamespace(**{n: importlib.import_module(n) for n in names})
