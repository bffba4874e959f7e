"""Minari datasets through TorchRL's :class:`MinariExperienceReplay`, with clear offline errors.

The dataset is read from Minari's own folder (``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``), downloaded there first by ``minari`` when missing and
the server is reachable; with neither the load fails with a message that says
what to bring where.

TorchRL 0.14.1's converter stores zeros instead of the data on the first
conversion (``MinariExperienceReplay._download_and_preproc`` writes its
TensorDict with ``memmap_like``, which makes files of the same shapes filled
with zeros); the conversion here is :class:`MinariFilledExperienceReplay`,
which writes the episodes into the storage again from Minari's own reader.

The memory-mapped cache ``<root>/<id>`` is built in a hidden sibling folder,
filled, noted in a check file and renamed into place
(:mod:`torchrl_misa.data.cache`); later loads check it and read it through
TorchRL's class, and a damaged one is rebuilt with a warning. Episode-end
flags stored as 0/1 numbers are read as bool (TorchRL's converter reads them
from a copy of the dataset with bool flags); other values are refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.datasets import MinariExperienceReplay

from torchrl_misa.data.cache import (
    cache_lock,
    discard,
    make_partial_folder,
    open_cache,
    replace_folder,
    reserve_space,
    write_check_file,
)
from torchrl_misa.data.d4rl import _warn_if_no_episode_end
from torchrl_misa.data.errors import CacheDamagedError, DatasetUnavailableError
from torchrl_misa.data.h5read import _h5py, as_bool_flags
from torchrl_misa.data.tasks import DEMO_DATASET


def minari_dir() -> Path:
    """Minari's dataset folder: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(
        os.environ.get("MINARI_DATASETS_PATH", os.path.expanduser("~/.minari/datasets"))
    )


def _minari_rows(h5_path: Path) -> int:
    """Steps of a Minari file (sum of its episodes' lengths), from the headers."""
    with _h5py().File(h5_path, "r") as f:
        return sum(int(f[ep]["rewards"].shape[0]) for ep in f.keys())


def _minari_cache_nbytes(h5_path: Path) -> int:
    """An upper bound of the converted cache's bytes: twice the file's arrays.

    Each step's observation is stored twice (``observation`` and
    ``("next", "observation")``); counting every array twice covers it.
    """
    total = [0]

    def visit(name, obj):
        if isinstance(obj, _h5py().Dataset):
            total[0] += obj.size * obj.dtype.itemsize

    with _h5py().File(h5_path, "r") as f:
        f.visititems(visit)
    return 2 * total[0]


def _flags_need_copy(dataset_id: str, h5_path: Path) -> bool:
    """Whether episode-end flags are stored as numbers; refuses values other than 0/1."""
    numeric = False
    with _h5py().File(h5_path, "r") as f:
        for ep in f.keys():
            for key in ("terminations", "truncations"):
                values = f[ep][key][()]
                if values.dtype != np.bool_:
                    as_bool_flags(values, key, f"minari:{dataset_id} {ep}")
                    numeric = True
    return numeric


def _bool_flags_copy(dataset_id: str, dest: Path) -> Path:
    """Copies Minari's folder of ``dataset_id`` under ``dest`` with bool flags; returns ``dest``."""
    shutil.copytree(minari_dir() / dataset_id, dest / dataset_id)
    with _h5py().File(dest / dataset_id / "data" / "main_data.hdf5", "r+") as f:
        for ep in f.keys():
            for key in ("terminations", "truncations"):
                values = f[ep][key][()]
                del f[ep][key]
                f[ep][key] = values == 1
    return dest


@contextlib.contextmanager
def _minari_path(path: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


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
        with tempfile.TemporaryDirectory() as tmp, _minari_path(tmp):
            minari.download_dataset(dataset_id=self.dataset_id)
            self.load_from_local_minari = True
            try:
                data = super()._download_and_preproc()
                fill_from_minari(data, self.dataset_id)
            finally:
                self.load_from_local_minari = False
        return data


def build_minari_cache(dataset_id: str, cache: Path) -> TensorDictBase:
    """Converts Minari's local copy of ``dataset_id`` into the checked cache ``cache``."""
    h5_path = minari_dir() / dataset_id / "data" / "main_data.hdf5"
    rows = _minari_rows(h5_path)
    tmp_root = make_partial_folder(cache)
    built = tmp_root / dataset_id
    try:
        source = minari_dir()
        copy = _flags_need_copy(dataset_id, h5_path)
        # the copy with bool flags is about the size of Minari's folder
        extra = h5_path.stat().st_size if copy else 0
        reserve_space(
            tmp_root, _minari_cache_nbytes(h5_path) + extra, shown=cache.parent
        )
        if copy:
            # TorchRL's converter cannot combine numeric flags: it reads a bool copy
            source = _bool_flags_copy(dataset_id, tmp_root / ".minari_source")
        with _minari_path(source):
            MinariFilledExperienceReplay(
                dataset_id, batch_size=1, root=tmp_root, load_from_local_minari=True
            )
        # what reached the disk is what gets checked
        write_check_file(built, TensorDict.load_memmap(built), source_rows=rows)
        replace_folder(built, cache)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return open_cache(cache, source_rows=rows)


def load_minari(
    dataset_id: str,
    batch_size: int,
    *,
    root: str | Path | None = None,
    **kwargs,
):
    """``minari:<id>`` as a TorchRL replay buffer, offline when Minari's folder has it.

    The cache ``<root>/<id>`` (``root`` defaults to TorchRL's
    ``~/.cache/torchrl/minari``) is checked, and built or rebuilt from
    Minari's folder when missing or damaged; TorchRL's
    :class:`~torchrl.data.datasets.MinariExperienceReplay` then reads it.
    Other keyword arguments go to that class.

    Raises:
        ImportError: ``minari`` is not installed (names ``pip install minari``).
        DatasetUnavailableError: no usable cache, no local copy and no network.
        DatasetFormatError: episode-end flags other than bool or 0/1.
    """
    if importlib.util.find_spec("minari") is None:
        raise ImportError(
            f"Loading 'minari:{dataset_id}' needs the minari package: `pip install minari` "
            "(or `pip install torchrl_misa[minari]`). Alternatives: a D4RL id "
            "('d4rl:hopper-medium-v2'), a local D4RL-layout file "
            f"('d4rl_file:/path/to/file.hdf5'), or the shipped '{DEMO_DATASET}'."
        )
    if root is None:  # TorchRL's default for MinariExperienceReplay
        root = Path("~/.cache/torchrl/minari").expanduser()
    root = Path(root)
    cache = root / dataset_id
    # another run loading the same dataset waits until this one has opened it
    with cache_lock(cache):
        local = minari_dir() / dataset_id / "data" / "main_data.hdf5"
        data = None
        if cache.exists():
            try:
                # a cache from TorchRL's stock class holds zeros (see above):
                # only ours, with a check file, is used
                data = open_cache(
                    cache, source_rows=_minari_rows(local) if local.exists() else None
                )
            except CacheDamagedError as err:
                warnings.warn(
                    f"Rebuilding the cache of Minari dataset {dataset_id!r}: {err}",
                    stacklevel=2,
                )
        if data is None:
            if not local.exists():
                import minari

                try:
                    minari.download_dataset(dataset_id)
                except Exception as err:  # no network, server error, unknown id
                    raise DatasetUnavailableError(
                        f"Minari dataset {dataset_id!r} is not in Minari's folder "
                        f"({minari_dir()}) and could not be downloaded "
                        f"({type(err).__name__}: {err}). On a machine with network run "
                        f"`minari download {dataset_id}` and copy "
                        f"{Path('~/.minari/datasets') / dataset_id} to "
                        f"{minari_dir() / dataset_id}, or use a local D4RL-layout file "
                        f"('d4rl_file:...', e.g. '{DEMO_DATASET}')."
                    ) from err
            discard(cache)
            data = build_minari_cache(dataset_id, cache)
        _warn_if_no_episode_end(data, f"minari:{dataset_id}")
        return MinariFilledExperienceReplay(
            dataset_id, batch_size=batch_size, root=root, download=False, **kwargs
        )
