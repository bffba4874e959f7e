"""``load_offline_data``: a dataset name to its processed replay buffer and what goes with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.data.datasets import load_dataset
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.envs.transforms import DeviceCastTransform, DoubleToFloat, ObservationNorm

from torchrl_misa.data.d4rl import D4RLFileExperienceReplay, OfflineD4RLExperienceReplay
from torchrl_misa.data.errors import DatasetFormatError
from torchrl_misa.data.minari_data import load_minari
from torchrl_misa.data.processing import (
    action_clip_transform,
    antmaze_reward_transform,
    minmax_reward_transform,
    obs_norm_transform,
    observation_stats,
    REWARD_KEY,
    reward_rule,
)
from torchrl_misa.data.tasks import family_from, split_source


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


def load_offline_dataset(
    dataset: str, batch_size: int, *, root=None, prefetch=None, **kwargs
) -> ReplayBuffer:
    """Loads ``dataset`` as its raw replay buffer (no processing transforms).

    ``dataset`` is a D4RL id (bare or ``"d4rl:"``:
    :class:`~torchrl_misa.data.OfflineD4RLExperienceReplay`),
    ``"minari:<id>"`` (:func:`~torchrl_misa.data.minari_data.load_minari`),
    ``"d4rl_file:<path>"`` or a path ending in ``.hdf5``
    (:class:`~torchrl_misa.data.D4RLFileExperienceReplay`). Any other prefix
    goes to :func:`torchrl.data.datasets.load_dataset`. Other keyword
    arguments go to the dataset class.

    Raises:
        DatasetUnavailableError: not cached and no network.
        DatasetFormatError: a bad file; names the key.
    """
    source, name = split_source(str(dataset))
    common = dict(root=root, prefetch=prefetch, **kwargs)
    if source == "d4rl":
        return OfflineD4RLExperienceReplay(name, batch_size, **common)
    if source == "d4rl_file":
        return D4RLFileExperienceReplay(name, batch_size, **common)
    if source == "minari":
        return load_minari(name, batch_size, **common)
    return load_dataset(f"{source}:{name}", batch_size=batch_size, **common)


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
) -> OfflineData:
    """The transitions of ``dataset`` in a TorchRL replay buffer, processed as in MISA.

    Args:
        dataset: ``"halfcheetah-medium-v2"`` or ``"d4rl:<id>"`` (D4RL: cache,
            then download), ``"minari:<id>"``,
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


def check_transitions(data: TensorDictBase, where: str) -> None:
    """Refuses NaN/inf observations or rewards and actions outside ``[-1, 1]``.

    Also refuses observations, actions or rewards that are not floating-point
    and actions that are not ``[N, action_dim]``.

    Raises:
        DatasetFormatError: naming the offending key.
    """
    for key in ("observation", ("next", "observation"), REWARD_KEY, "action"):
        if key not in data.keys(True):
            if key == ("next", "observation"):
                continue
            raise DatasetFormatError(f"{where}: the transitions have no {key!r} entry.")
        value = data[key]
        if not value.is_floating_point():
            raise DatasetFormatError(
                f"{where}: {key!r} holds {value.dtype} values; floating-point values "
                "are expected (store them as float32)."
            )
        if not torch.isfinite(value).all():
            raise DatasetFormatError(
                f"{where}: {key!r} holds NaN or inf values; repair or drop those rows."
            )
    action = data["action"]
    if action.ndim != 2:
        raise DatasetFormatError(
            f"{where}: 'action' has shape {list(action.shape)}; actions must be "
            "[N, action_dim] (one flat vector per transition)."
        )
    if action.numel() and action.abs().max() > 1.0:
        raise DatasetFormatError(
            f"{where}: 'action' has values outside [-1, 1] (max |a| = "
            f"{float(action.abs().max()):.4g}). Offline datasets here store actions "
            "scaled to [-1, 1]; rescale them with the env's action bounds first."
        )
