"""D4RL normalised scores: ``100 * (R - R_random) / (R_expert - R_random)``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_misa.data.tasks import (
    D4RL_REF_RETURNS,
    dataset_family,
    dataset_metadata,
    dataset_name,
    split_source,
)


def reference_returns(dataset: Any) -> tuple[float, float]:
    """``(R_random, R_expert)`` used to normalise returns on ``dataset``.

    Files made here carry them in ``metadata/random_return`` and
    ``metadata/expert_return``; D4RL tasks use D4RL's reference table.

    Examples:
        >>> reference_returns("hopper-medium-v2")
        (-20.272305, 3234.3)
    """
    meta = dataset_metadata(dataset)
    if "random_return" in meta and "expert_return" in meta:
        return float(meta["random_return"]), float(meta["expert_return"])
    fam = dataset_family(dataset)
    if fam is None:
        raise ValueError(
            f"No reference returns for {dataset_name(dataset)!r}: it is not a D4RL task "
            "and it has no 'metadata/random_return' and 'metadata/expert_return'."
        )
    return D4RL_REF_RETURNS[fam]


def normalized_score(dataset: Any, episode_return):
    """D4RL's normalised score of ``episode_return`` on ``dataset``'s task.

    Args:
        dataset: a D4RL id, ``"d4rl_file:<path>"``/``.hdf5`` path, Minari id or a
            buffer it loads, or an :class:`~torchrl_misa.data.OfflineData`.
        episode_return: a float, or an array/tensor of returns.

    Returns:
        ``100 * (R - R_random) / (R_expert - R_random)``: a float for a
        scalar input, else a numpy array.

    Examples:
        >>> normalized_score("halfcheetah-medium-v2", 12135.0)
        100.0
        >>> round(normalized_score("d4rl:halfcheetah-medium-v2", -280.178953), 9)
        0.0
    """
    low, high = reference_returns(dataset)
    if isinstance(episode_return, torch.Tensor):
        episode_return = episode_return.detach().cpu().numpy()
    value = 100.0 * (np.asarray(episode_return, dtype=np.float64) - low) / (high - low)
    return float(value) if value.ndim == 0 else value


def episode_returns_from_arrays(
    rewards: np.ndarray, ends: np.ndarray, *, keep_partial: bool = False
) -> np.ndarray:
    """Sums of ``rewards`` between episode ends (``ends[t]``: episode ends after step t).

    A trailing run of steps with no end is dropped unless ``keep_partial``;
    with no end at all the result is empty (unless ``keep_partial``).

    Examples:
        >>> episode_returns_from_arrays(np.array([1., 2, 3, 4]), np.array([0, 1, 0, 0], bool))
        array([3.])
        >>> episode_returns_from_arrays(np.array([1., 2]), np.array([0, 0], bool))
        array([], dtype=float64)
    """
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    ends = np.asarray(ends, dtype=bool).reshape(-1)
    stops = np.flatnonzero(ends) + 1
    sums = (
        np.add.reduceat(rewards[: stops[-1]], np.r_[0, stops[:-1]])
        if stops.size
        else np.empty(0)
    )
    if keep_partial and (stops.size == 0 or stops[-1] < rewards.size):
        start = stops[-1] if stops.size else 0
        sums = np.r_[sums, rewards[start:].sum()]
    return sums


def _complete_episode_returns(dataset: Any) -> np.ndarray:
    if isinstance(dataset, (str, Path)):
        source, name = split_source(str(dataset))
        if source == "d4rl_file":
            from torchrl_misa.data.h5read import _h5py, as_bool_flags

            where = str(name)
            with _h5py().File(Path(name).expanduser(), "r") as f:
                ends = as_bool_flags(f["terminals"][()], "terminals", where)
                if "timeouts" in f:
                    ends = ends.reshape(-1) | as_bool_flags(
                        f["timeouts"][()], "timeouts", where
                    ).reshape(-1)
                return episode_returns_from_arrays(f["rewards"][()], ends)
        from torchrl_misa.data.offline_data import load_offline_dataset

        dataset = load_offline_dataset(str(dataset), batch_size=1)
    # an OfflineData's buffer, or a buffer: its stored transitions, untransformed
    data = getattr(dataset, "replay_buffer", dataset).storage[:]
    return episode_returns_from_arrays(
        data["next", "reward"].reshape(-1).numpy(),
        data["next", "done"].reshape(-1).numpy(),
    )


def dataset_episode_returns(dataset: Any) -> np.ndarray:
    """Undiscounted returns of the complete episodes in ``dataset`` (raw rewards).

    Empty, with a warning, when the dataset has no episode end (no terminal,
    no timeout): it holds no complete episode.
    """
    returns = _complete_episode_returns(dataset)
    if returns.size == 0:
        warnings.warn(
            f"{dataset_name(dataset)!r} has no episode end (no terminal, no timeout): "
            "it holds no complete episode, so it has no episode returns.",
            stacklevel=2,
        )
    return returns


def dataset_average_normalized_score(dataset: Any) -> float:
    """Mean normalised return of the dataset's complete episodes.

    ``nan``, with a warning, when the dataset has no episode end (no
    terminal, no timeout): the average is undefined, not the return of the
    whole file.

    Examples:
        >>> import tempfile, numpy as np
        >>> from torchrl_misa.data.hdf5 import write_d4rl_hdf5
        >>> n = 4  # two episodes, returns 1 and 5
        >>> data = dict(observations=np.zeros((n, 1), "f4"), actions=np.zeros((n, 1), "f4"),
        ...             rewards=np.array([0, 1, 2, 3], "f4"), terminals=np.array([0, 1, 0, 0], bool),
        ...             timeouts=np.array([0, 0, 0, 1], bool), next_observations=np.zeros((n, 1), "f4"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_d4rl_hdf5(f"{d}/x.hdf5", data, {"random_return": 0.0, "expert_return": 10.0})
        ...     dataset_average_normalized_score(path)
        30.0
    """
    returns = _complete_episode_returns(dataset)
    if returns.size == 0:
        warnings.warn(
            f"{dataset_name(dataset)!r} has no episode end (no terminal, no timeout): "
            "with no complete episode its average normalised score is undefined (nan).",
            stacklevel=2,
        )
        return float("nan")
    return float(np.mean(normalized_score(dataset, returns)))
