"""Minari datasets through TorchRL's :class:`MinariExperienceReplay`, with clear offline errors.

The dataset is read from Minari's own folder (``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``), downloaded there first by ``minari`` when missing and
the server is reachable.

TorchRL 0.14.1's converter fills its tensors and then writes them with
``memmap_like``, which stores zeros instead of the data. After TorchRL has
built its storage, :func:`refill_from_minari` writes the episodes into it
again from Minari's own reader (a no-op on versions without the bug, apart
from the time it takes), so the buffer holds the real transitions.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_misa.data.d4rl import _network_error, DatasetUnavailableError, DEMO_DATASET

MINARI_SERVER = "https://storage.googleapis.com"


def minari_dir() -> Path:
    """Minari's dataset folder: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(
        os.environ.get("MINARI_DATASETS_PATH", os.path.expanduser("~/.minari/datasets"))
    )


def _set(dst: TensorDictBase, key, value, rows: slice) -> None:
    """``dst[key][rows] = value``; dict values go to the nested entries of the same names."""
    if isinstance(value, dict):
        for k, v in value.items():
            _set(dst, (key, k) if isinstance(key, str) else (*key, k), v, rows)
        return
    if key not in dst.keys(True):
        return
    target = dst.get(key)
    value = torch.as_tensor(np.asarray(value)).to(target.dtype)
    target[rows] = value.reshape(target[rows].shape)


def _slice_obs(obs, part: slice):
    if isinstance(obs, dict):
        return {k: _slice_obs(v, part) for k, v in obs.items()}
    return np.asarray(obs)[part]


def refill_from_minari(rb, dataset_id: str) -> None:
    """Writes every episode of ``dataset_id`` (read with ``minari``) into ``rb``'s storage.

    Rows follow TorchRL's layout: episodes in id order, ``observation`` =
    ``observations[:-1]``, ``("next", "observation")`` = ``observations[1:]``,
    ``("next", "reward" | "terminated" | "truncated" | "done")``.
    """
    import minari

    data = rb.storage._storage
    dataset = minari.load_dataset(dataset_id)
    start = 0
    for episode in dataset.iterate_episodes():
        steps = len(episode.rewards)
        rows = slice(start, start + steps)
        _set(data, "observation", _slice_obs(episode.observations, slice(0, -1)), rows)
        _set(
            data,
            ("next", "observation"),
            _slice_obs(episode.observations, slice(1, None)),
            rows,
        )
        _set(data, "action", episode.actions, rows)
        _set(data, ("next", "reward"), episode.rewards, rows)
        term = np.asarray(episode.terminations, bool)
        trunc = np.asarray(episode.truncations, bool)
        _set(data, ("next", "terminated"), term, rows)
        _set(data, ("next", "truncated"), trunc, rows)
        _set(data, ("next", "done"), term | trunc, rows)
        if "episode" in data.keys():
            data["episode"][rows] = int(episode.id)
        start += steps
    if start != len(rb):
        raise RuntimeError(
            f"Minari dataset {dataset_id!r} has {start} steps but TorchRL's buffer has {len(rb)}."
        )


def load_minari(
    dataset_id: str,
    batch_size: int,
    *,
    root: str | Path | None = None,
    network_timeout: float = 3.0,
    **kwargs,
):
    """``minari:<id>`` as a TorchRL replay buffer, offline when Minari's folder has it.

    Raises:
        ImportError: ``minari`` is not installed (names ``pip install minari``).
        DatasetUnavailableError: no local copy and no network.
    """
    if importlib.util.find_spec("minari") is None:
        raise ImportError(
            f"Loading 'minari:{dataset_id}' needs the minari package: `pip install minari` "
            "(or `pip install torchrl_misa[minari]`). Alternatives: a D4RL id "
            "('d4rl:hopper-medium-v2'), a local D4RL-layout file "
            f"('d4rl_file:/path/to/file.hdf5'), or the shipped '{DEMO_DATASET}'."
        )
    from torchrl.data.datasets import load_dataset

    local = minari_dir() / dataset_id / "data" / "main_data.hdf5"
    if not local.exists():
        why = _network_error(MINARI_SERVER, network_timeout)
        if why is not None:
            raise DatasetUnavailableError(
                f"Minari dataset {dataset_id!r} not found: not in Minari's folder "
                f"({minari_dir()}) and Minari's server cannot be reached ({why}). On a "
                f"machine with network run `minari download {dataset_id}` and copy "
                f"{Path('~/.minari/datasets') / dataset_id} to {minari_dir() / dataset_id}, "
                f"or use a local D4RL-layout file ('d4rl_file:...', e.g. '{DEMO_DATASET}')."
            )
        import minari

        minari.download_dataset(dataset_id)
    rb = load_dataset(
        f"minari:{dataset_id}",
        batch_size=batch_size,
        root=root,
        load_from_local_minari=True,
        **kwargs,
    )
    refill_from_minari(rb, dataset_id)
    rb.dataset_name = f"minari:{dataset_id}"
    return rb
