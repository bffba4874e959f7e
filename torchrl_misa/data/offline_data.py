"""``load_offline_data``: a dataset name to its processed replay buffer and what goes with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.envs.transforms import DeviceCastTransform, DoubleToFloat, ObservationNorm

from torchrl_misa.data.buffer import check_transitions, load_offline_dataset
from torchrl_misa.data.processing import (
    action_clip_transform,
    antmaze_reward_transform,
    minmax_reward_transform,
    obs_norm_transform,
    observation_stats,
    REWARD_KEY,
    reward_rule,
)
from torchrl_misa.data.tasks import family_from


@dataclass(frozen=True)
class OfflineData:
    """An offline dataset ready for training, and what evaluation and scores need.

    Attributes:
        replay_buffer: TorchRL replay buffer of transitions, MISA's processing
            in its ``transform``.
        obs_norm: env-side :class:`~torchrl.envs.transforms.ObservationNorm`
            with the statistics the buffer normalises with (``None`` when
            observations are not normalised): append it to the evaluation env
            and keep its ``state_dict()`` in checkpoints.
        reward_rule: the reward processing applied: ``"none"``, ``"antmaze"``
            or ``"minmax"``.
        metadata: the dataset's ``metadata/*`` (files) or Minari's
            description; ``{}`` when there is none.
        name: the dataset as it was asked for.

    :func:`~torchrl_misa.data.normalized_score`,
    :func:`~torchrl_misa.data.dataset_env_id` and the other functions that
    take a dataset accept an :class:`OfflineData`.
    """

    replay_buffer: ReplayBuffer
    obs_norm: ObservationNorm | None
    reward_rule: str
    metadata: dict
    name: str


def load_offline_data(
    dataset: str,
    batch_size: int,
    *,
    clip_actions: float | None = 0.999,
    reward_processing: str | None = "auto",
    normalize_observations: bool = False,
    device: torch.device | str | None = None,
    prefetch: int | None = None,
    root: str | Path | None = None,
    network_timeout: float = 3.0,
) -> OfflineData:
    """The transitions of ``dataset`` in a TorchRL replay buffer, processed as in MISA.

    Args:
        dataset: ``"halfcheetah-medium-v2"`` or ``"d4rl:<id>"`` (D4RL: cache,
            D4RL's folder, then download), ``"minari:<id>"``,
            ``"d4rl_file:<path>"`` or a plain path ending in ``.hdf5``.
        batch_size: transitions per ``replay_buffer.sample()``.

    Keyword Args:
        clip_actions: clip ``action`` to ``[-c, c]`` when sampling (``None``: off).
            Actions outside ``[-1, 1]`` in the data are refused either way.
        reward_processing: ``"auto"`` (antmaze: ``(r - 0.5) * 4``; kitchen and
            adroit: min-max to ``[-1, 1]``; others untouched, chosen from the
            name or the file's metadata), ``"antmaze"``, ``"minmax"``, or
            ``None``/``"none"``.
        normalize_observations: normalise ``observation`` and
            ``("next", "observation")`` with the dataset's mean and std; the
            env-side normaliser is :attr:`OfflineData.obs_norm`.
        device: samples are moved there (first transform, so the others run there).
        prefetch: batches prefetched by background threads.
        root: cache folder of the dataset class.
        network_timeout: seconds allowed to reach a download server.

    Returns:
        an :class:`OfflineData`. A sample of its buffer has ``observation``
        ``[B, *obs]``, ``action`` ``[B, *act]`` and ``("next", "observation" |
        "reward" | "done" | "terminated" | "truncated")``, rewards and flags
        of shape ``[B, 1]``. The stored data stay raw.

    Raises:
        ValueError: an unknown ``reward_processing`` (before anything is loaded).
        DatasetUnavailableError: not cached and no network.
        DatasetFormatError: a bad file or bad values; names the key.

    Examples:
        >>> import tempfile, numpy as np
        >>> from torchrl_misa.data import load_offline_data, write_d4rl_hdf5
        >>> n = 50
        >>> rng = np.random.default_rng(0)
        >>> data = dict(observations=rng.normal(size=(n, 3)).astype("f4"),
        ...             actions=rng.uniform(-1, 1, (n, 1)).astype("f4"),
        ...             rewards=rng.normal(size=n).astype("f4"), terminals=np.zeros(n, bool),
        ...             timeouts=np.arange(n) % 10 == 9, next_observations=rng.normal(size=(n, 3)).astype("f4"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_d4rl_hdf5(f"{d}/toy.hdf5", data, {"env_id": "Pendulum-v1"})
        ...     offline = load_offline_data(str(path), 8, normalize_observations=True, root=d)
        ...     batch = offline.replay_buffer.sample()
        >>> batch["observation"].shape, batch["next", "reward"].shape, batch["next", "done"].dtype
        (torch.Size([8, 3]), torch.Size([8, 1]), torch.bool)
        >>> type(offline.obs_norm).__name__, offline.reward_rule, offline.metadata["env_id"]
        ('ObservationNorm', 'none', 'Pendulum-v1')
    """
    reward_rule(None, reward_processing)  # a typo fails before any download
    name = str(dataset)
    rb = load_offline_dataset(
        dataset,
        batch_size,
        root=root,
        prefetch=prefetch,
        network_timeout=network_timeout,
    )
    data = rb.storage[:]  # the stored transitions, untransformed
    check_transitions(data, name)
    found = getattr(rb, "metadata", None)
    metadata = dict(found) if isinstance(found, dict) else {}

    if device is not None:
        rb.append_transform(DeviceCastTransform(torch.device(device)))
    doubles = [
        key
        for key in ("observation", "action", ("next", "observation"), REWARD_KEY)
        if key in data.keys(True) and data.get(key).dtype == torch.float64
    ]
    if doubles:  # e.g. Minari's float64 rewards: the losses work in float32
        rb.append_transform(DoubleToFloat(in_keys=doubles))
    if clip_actions is not None:
        rb.append_transform(action_clip_transform(float(clip_actions)))
    rule = reward_rule(family_from(name, metadata), reward_processing)
    if rule == "antmaze":
        rb.append_transform(antmaze_reward_transform())
    elif rule == "minmax":
        rewards = data[REWARD_KEY]
        rb.append_transform(
            minmax_reward_transform(float(rewards.min()), float(rewards.max()))
        )
    obs_norm = None
    if normalize_observations:
        loc, scale = observation_stats(data)
        obs_norm = obs_norm_transform(loc, scale)
        rb.append_transform(
            obs_norm_transform(
                loc, scale, in_keys=("observation", ("next", "observation"))
            )
        )
    if device is not None:
        # constants of the transforms (clip bounds, loc/scale) live with the data
        rb.transform.to(torch.device(device))
    return OfflineData(
        replay_buffer=rb,
        obs_norm=obs_norm,
        reward_rule=rule,
        metadata=metadata,
        name=name,
    )
