"""Any supported dataset name to its raw TorchRL replay buffer, and value checks."""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.data.datasets import load_dataset
from torchrl.data.replay_buffers import ReplayBuffer

from torchrl_misa.data.d4rl import D4RLFileExperienceReplay, OfflineD4RLExperienceReplay
from torchrl_misa.data.errors import DatasetFormatError
from torchrl_misa.data.minari_data import load_minari
from torchrl_misa.data.processing import REWARD_KEY
from torchrl_misa.data.tasks import split_source


def load_offline_dataset(
    dataset: str,
    batch_size: int,
    *,
    root: str | Path | None = None,
    prefetch: int | None = None,
    network_timeout: float = 3.0,
    **kwargs,
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
    if source == "minari":
        return load_minari(name, batch_size, network_timeout=network_timeout, **common)
    if source == "d4rl":
        return OfflineD4RLExperienceReplay(
            name, batch_size, network_timeout=network_timeout, **common
        )
    if source == "d4rl_file":
        return D4RLFileExperienceReplay(name, batch_size, **common)
    return load_dataset(f"{source}:{name}", batch_size=batch_size, **common)


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
