"""``make_offline_replay_buffer``: any supported dataset name to a processed TorchRL buffer."""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.data.datasets import load_dataset
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.envs.transforms import DeviceCastTransform, DoubleToFloat

from torchrl_misa.data.hdf5 import DatasetFormatError
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
from torchrl_misa.data.tasks import dataset_family, split_source


def load_offline_dataset(
    dataset: str,
    batch_size: int,
    *,
    root: str | Path | None = None,
    prefetch: int | None = None,
    network_timeout: float = 3.0,
    **kwargs,
):
    """Loads ``dataset`` through :func:`torchrl.data.datasets.load_dataset`, raw.

    ``dataset`` is a D4RL id (bare or ``"d4rl:"``), ``"minari:<id>"``,
    ``"d4rl_file:<path>"`` or a path ending in ``.hdf5``. Other keyword
    arguments go to the dataset class.
    """
    import torchrl_misa.data  # noqa: F401  (registers the d4rl_file prefix)

    source, name = split_source(str(dataset))
    if source == "minari":
        return load_minari(
            name,
            batch_size,
            root=root,
            network_timeout=network_timeout,
            prefetch=prefetch,
            **kwargs,
        )
    if source in ("d4rl", "d4rl_file"):
        kwargs["network_timeout"] = network_timeout
    return load_dataset(
        f"{source}:{name}",
        batch_size=batch_size,
        root=root,
        prefetch=prefetch,
        **kwargs,
    )


def check_transitions(data: TensorDictBase, where: str) -> None:
    """Refuses NaN/inf observations or rewards and actions outside ``[-1, 1]``.

    Raises:
        DatasetFormatError: naming the offending key.
    """
    for key in ("observation", ("next", "observation"), REWARD_KEY, "action"):
        if key not in data.keys(True):
            if key == ("next", "observation"):
                continue
            raise DatasetFormatError(f"{where}: the transitions have no {key!r} entry.")
        value = data[key]
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DatasetFormatError(
                f"{where}: {key!r} holds NaN or inf values; repair or drop those rows."
            )
    action = data["action"]
    if action.numel() and action.abs().max() > 1.0:
        raise DatasetFormatError(
            f"{where}: 'action' has values outside [-1, 1] (max |a| = "
            f"{float(action.abs().max()):.4g}). Offline datasets here store actions "
            "scaled to [-1, 1]; rescale them with the env's action bounds first."
        )


def make_offline_replay_buffer(
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
) -> ReplayBuffer:
    """A TorchRL replay buffer of transitions from ``dataset``, processed as in MISA.

    Args:
        dataset: ``"halfcheetah-medium-v2"`` or ``"d4rl:<id>"`` (D4RL: cache,
            D4RL's folder, then download), ``"minari:<id>"``,
            ``"d4rl_file:<path>"`` or a plain path ending in ``.hdf5``.
        batch_size: transitions per :meth:`sample`.

    Keyword Args:
        clip_actions: clip ``action`` to ``[-c, c]`` when sampling (``None``: off).
            Actions outside ``[-1, 1]`` in the data are refused either way.
        reward_processing: ``"auto"`` (antmaze: ``(r - 0.5) * 4``; kitchen and
            adroit: min-max to ``[-1, 1]``; others untouched, chosen from the
            name or the file's metadata), ``"antmaze"``, ``"minmax"``, or
            ``None``/``"none"``.
        normalize_observations: normalise ``observation`` and
            ``("next", "observation")`` with the dataset's mean and std. The
            same statistics, as an env-side
            :class:`~torchrl.envs.transforms.ObservationNorm`, are in
            ``rb.obs_norm`` (``None`` when off): append it to the evaluation
            env and keep its ``state_dict()`` in the checkpoint.
        device: samples are moved there (first transform, so the others run there).
        prefetch: batches prefetched by background threads.
        root: cache folder of the dataset class.
        network_timeout: seconds allowed to reach a download server.

    Returns:
        the dataset's replay buffer (a TorchRL ``ReplayBuffer``) with the
        processing in ``rb.transform`` and attributes ``rb.obs_norm``,
        ``rb.dataset_name``, ``rb.reward_rule`` and ``rb.metadata``. A sample
        has ``observation`` ``[B, *obs]``, ``action`` ``[B, *act]`` and
        ``("next", "observation" | "reward" | "done" | "terminated" |
        "truncated")``, rewards and flags of shape ``[B, 1]``.

    Raises:
        DatasetUnavailableError: not cached and no network.
        DatasetFormatError: a bad file or bad values; names the key.

    Examples:
        >>> import tempfile, numpy as np
        >>> from torchrl_misa.data import make_offline_replay_buffer
        >>> from torchrl_misa.data.hdf5 import write_d4rl_hdf5
        >>> n = 50
        >>> rng = np.random.default_rng(0)
        >>> data = dict(observations=rng.normal(size=(n, 3)).astype("f4"),
        ...             actions=rng.uniform(-1, 1, (n, 1)).astype("f4"),
        ...             rewards=rng.normal(size=n).astype("f4"), terminals=np.zeros(n, bool),
        ...             timeouts=np.arange(n) % 10 == 9, next_observations=rng.normal(size=(n, 3)).astype("f4"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_d4rl_hdf5(f"{d}/toy.hdf5", data, {"env_id": "Pendulum-v1"})
        ...     rb = make_offline_replay_buffer(str(path), 8, normalize_observations=True, root=d)
        ...     batch = rb.sample()
        >>> batch["observation"].shape, batch["next", "reward"].shape, batch["next", "done"].dtype
        (torch.Size([8, 3]), torch.Size([8, 1]), torch.bool)
        >>> type(rb.obs_norm).__name__
        'ObservationNorm'
    """
    rb = load_offline_dataset(
        dataset,
        batch_size,
        root=root,
        prefetch=prefetch,
        network_timeout=network_timeout,
    )
    data = rb.storage._storage
    check_transitions(data, str(dataset))
    rb.dataset_name = str(dataset)
    if not isinstance(getattr(rb, "metadata", None), dict):
        rb.metadata = {}

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
    rule = reward_rule(dataset_family(rb), reward_processing)
    rb.reward_rule = rule
    if rule == "antmaze":
        rb.append_transform(antmaze_reward_transform())
    elif rule == "minmax":
        rewards = data[REWARD_KEY]
        rb.append_transform(
            minmax_reward_transform(float(rewards.min()), float(rewards.max()))
        )
    rb.obs_norm = None
    if normalize_observations:
        loc, scale = observation_stats(data)
        rb.obs_norm = obs_norm_transform(loc, scale)
        rb_norm = obs_norm_transform(
            loc, scale, in_keys=("observation", ("next", "observation"))
        )
        rb.append_transform(rb_norm)
    if device is not None:
        # constants of the transforms (clip bounds, loc/scale) live with the data
        rb.transform.to(torch.device(device))
    return rb
