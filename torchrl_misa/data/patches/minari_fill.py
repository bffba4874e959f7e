"""Store the data of a Minari dataset on its first conversion, not zeros.

The bug (TorchRL 0.14.1): ``MinariExperienceReplay._download_and_preproc``
fills an in-memory TensorDict episode by episode, then writes it with
``td_data.memmap_like(path)``, which makes files of the same shapes filled
with zeros: the buffer, and its cache, hold zeros. Later loads read that
cache.

The fix: after the stock conversion, write every episode into the
memory-mapped storage again, read with Minari's own reader
(:func:`fill_from_minari`). (In TorchRL itself ``memmap_like`` would become
``memmap``.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data.datasets.minari_data import MinariExperienceReplay


def _set(dst: TensorDictBase, key, value, rows: slice) -> None:
    """``dst[key][rows] = value``; dict values go to the nested entries of the same names."""
    if isinstance(value, dict):
        for k, v in value.items():
            _set(dst, (key, k) if isinstance(key, str) else (*key, k), v, rows)
        return
    if key not in dst.keys(True, True):
        return  # an entry the converter did not make (e.g. non-tensor infos)
    target = dst.get(key)
    value = torch.as_tensor(np.asarray(value)).to(target.dtype)
    target[rows] = value.reshape(target[rows].shape)


def _slice(value, part: slice):
    if isinstance(value, dict):
        return {k: _slice(v, part) for k, v in value.items()}
    return np.asarray(value)[part]


def _length(value) -> int | None:
    """Rows of the first array in ``value`` (a possibly nested dict), ``None`` if none."""
    if isinstance(value, dict):
        for v in value.values():
            length = _length(v)
            if length is not None:
                return length
        return None
    value = np.asarray(value)
    return value.shape[0] if value.ndim else None


def fill_from_minari(data: TensorDictBase, dataset_id: str) -> None:
    """Writes every episode of ``dataset_id`` (read with ``minari``) into ``data``.

    ``data`` is the memory-mapped storage made by
    :class:`~torchrl.data.datasets.MinariExperienceReplay`. Rows follow its
    layout: episodes in id order, ``observation`` = ``observations[:-1]``,
    ``("next", "observation")`` = ``observations[1:]`` (and the same for
    ``info``), ``action``, ``("next", "reward" | "terminated" | "truncated" |
    "done")`` and ``episode``. Minari is read from ``$MINARI_DATASETS_PATH``
    (or its default folder).

    Raises:
        RuntimeError: the episodes' steps do not add up to ``data``'s rows.
    """
    import minari

    dataset = minari.load_dataset(dataset_id)
    start = 0
    for episode in dataset.iterate_episodes():
        steps = len(episode.rewards)
        rows = slice(start, start + steps)
        for key, values in (
            ("observation", episode.observations),
            ("info", episode.infos),
        ):
            if _length(values) != steps + 1:
                continue  # no infos, or not one per state: the converter skips them too
            _set(data, key, _slice(values, slice(0, -1)), rows)
            _set(data, ("next", key), _slice(values, slice(1, None)), rows)
        _set(data, "action", episode.actions, rows)
        _set(data, ("next", "reward"), episode.rewards, rows)
        _set(data, ("next", "terminated"), episode.terminations, rows)
        _set(data, ("next", "truncated"), episode.truncations, rows)
        done = np.logical_or(episode.terminations, episode.truncations)
        _set(data, ("next", "done"), done, rows)
        _set(data, "episode", np.full(steps, int(episode.id)), rows)
        start += steps
    if start != data.shape[0]:
        raise RuntimeError(
            f"Minari dataset {dataset_id!r} has {start} steps but the storage has "
            f"{data.shape[0]} rows."
        )


@contextlib.contextmanager
def _minari_datasets_path(path: str | Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


class MinariFilledExperienceReplay(MinariExperienceReplay):
    """TorchRL's :class:`~torchrl.data.datasets.MinariExperienceReplay`, holding the data after conversion.

    Same arguments as the parent class. As the parent, a download goes to a
    temporary folder; the episodes are read from there (or from Minari's own
    folder with ``load_from_local_minari=True``) and written into the storage
    before it is returned. Loading an existing cache is the parent's.
    """

    def _download_and_preproc(self):
        if self.load_from_local_minari:
            data = super()._download_and_preproc()
            fill_from_minari(data, self.dataset_id)
            return data
        import minari

        # the parent deletes its download before returning: download here, so
        # that the episodes can still be read once it has converted them
        with tempfile.TemporaryDirectory() as tmp, _minari_datasets_path(tmp):
            minari.download_dataset(dataset_id=self.dataset_id)
            self.load_from_local_minari = True
            try:
                data = super()._download_and_preproc()
                fill_from_minari(data, self.dataset_id)
            finally:
                self.load_from_local_minari = False
        return data
