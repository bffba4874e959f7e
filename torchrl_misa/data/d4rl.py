"""D4RL datasets through TorchRL's :class:`D4RLExperienceReplay`, fixed and checked.

Two classes, one reading path. Both subclass TorchRL's
:class:`~torchrl.data.datasets.D4RLExperienceReplay`: the conversion to
transitions (``observation``, ``action``, ``("next", ...)``) is TorchRL's own,
and TorchRL's class reads the memory-mapped cache. What they change:

* the cache is written atomically, with a check file, and checked on every
  load (:mod:`torchrl_misa.data.cache`), so an interrupted or damaged cache is
  rebuilt instead of read as zeros; runs that load the same dataset at once
  take turns (:func:`~torchrl_misa.data.cache.cache_lock`);
* two fixes to TorchRL 0.14.1's conversion of files with
  ``next_observations`` (:func:`repeat_last_row`,
  :func:`unknown_next_observation`): the last transition is kept, and the next
  observation of a transition cut by a time limit (``truncated`` and not
  ``terminated``) is the file's row instead of zeros, so TD targets that
  bootstrap through time limits see the true next state;
* the raw file is read and checked here (:mod:`torchrl_misa.data.hdf5`):
  flags stored as 0/1 numbers are read as bool, a bad file is refused with
  the key named, and no network means a clear error, not a stack trace.

:class:`OfflineD4RLExperienceReplay` downloads a D4RL id from D4RL's server,
as TorchRL does; it is not registered (``load_dataset("d4rl:...")`` stays
TorchRL's class). :class:`D4RLFileExperienceReplay` (prefix ``d4rl_file:``)
reads any local D4RL-layout file, with no network.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.collectors.utils import split_trajectories
from torchrl.data.datasets import D4RLExperienceReplay
from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS

from torchrl_misa.data.cache import cache_lock, discard, open_cache, write_cache
from torchrl_misa.data.errors import CacheDamagedError, DatasetUnavailableError
from torchrl_misa.data.h5read import read_metadata
from torchrl_misa.data.hdf5 import (
    check_not_a_folder,
    read_d4rl_hdf5,
    validate_d4rl_hdf5,
)
from torchrl_misa.data.tasks import DEMO_DATASET


def torchrl_cache_dir(kind: str) -> Path:
    """TorchRL's default cache folder of a dataset kind: ``~/.cache/torchrl/<kind>``."""
    return Path("~/.cache/torchrl").expanduser() / kind


def d4rl_url(dataset_id: str) -> str:
    """D4RL's download URL of ``dataset_id``; ``KeyError`` with close names if unknown."""
    try:
        return D4RL_DATASETS[dataset_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(dataset_id, list(D4RL_DATASETS), n=5)
        raise KeyError(
            f"Unknown D4RL dataset id {dataset_id!r}. Close names: {close}. "
            "A local D4RL-layout file can be loaded with 'd4rl_file:/path/to/file.hdf5'."
        ) from None


# -- the two fixes to TorchRL 0.14.1's conversion ------------------------------
def repeat_last_row(dataset: TensorDictBase) -> TensorDictBase:
    """D4RL's raw rows (no ``metadata``) with the last row appended once more.

    The converter pairs row ``t`` with row ``t + 1`` and drops the last
    row. With ``next_observations`` (every D4RL MuJoCo v2 file) each row is a
    complete transition, the last one included: handing the converter a copy
    of the last row keeps it. Rows without ``next_observations`` are returned
    unchanged: there the next observation of the last row is unknown.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> rows = TensorDict(observations=torch.arange(3.0)[:, None],
        ...                   next_observations=torch.arange(1.0, 4.0)[:, None], batch_size=[3])
        >>> repeat_last_row(rows)["next_observations"].squeeze(-1)
        tensor([1., 2., 3., 3.])
    """
    if "next_observations" not in dataset.keys():
        return dataset
    if dataset.batch_dims == 0:  # read without a batch size: rows are dim 0
        dataset = dataset.copy().auto_batch_size_(batch_dims=1)
    return torch.cat([dataset, dataset[-1:]], 0)


def unknown_next_observation(
    data: TensorDictBase, *, has_next_observations: bool
) -> torch.Tensor:
    """Rows (``[N]`` bool) whose ``("next", "observation")`` is not in the file.

    Not every ``("next", "done")`` row: time-limit cuts are done too, and TD
    targets bootstrap from their next state. A file with ``next_observations``
    holds that state: only terminal rows are unknown.

    Args:
        data: converted transitions, with ``("next", "terminated")`` and
            ``("next", "done")`` of shape ``[N, 1]``.
        has_next_observations: the file stores ``next_observations``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"next": {"terminated": torch.tensor([[True], [False], [False]]),
        ...                             "done": torch.tensor([[True], [True], [False]])}}, [3])
        >>> unknown_next_observation(data, has_next_observations=True)
        tensor([ True, False, False])
        >>> unknown_next_observation(data, has_next_observations=False)
        tensor([ True,  True, False])
    """
    key = "terminated" if has_next_observations else "done"
    return data["next", key].reshape(-1)


def _source_rows(path: Path) -> int:
    """Rows of a D4RL-layout file, after the structural checks (headers only)."""
    return validate_d4rl_hdf5(path, check_values=False)


def _warn_if_no_episode_end(data, name: str) -> None:
    if not bool(data["next", "done"].any()):
        warnings.warn(
            f"Dataset {name!r} has no episode end: no transition is terminal or cut "
            "by a time limit. It reads as one unfinished episode (TD targets "
            "bootstrap everywhere) and its episode returns are undefined. If it "
            "holds several episodes, mark their ends in 'terminals' or 'timeouts'.",
            stacklevel=3,
        )


class OfflineD4RLExperienceReplay(D4RLExperienceReplay):
    """TorchRL's D4RL replay buffer, with the fixes above and a checked cache.

    Takes the arguments of :class:`~torchrl.data.datasets.D4RLExperienceReplay`
    (data come from D4RL's HDF5 files, not from the ``d4rl`` package:
    ``direct_download=False`` and ``from_env=True`` are refused), plus:

    Keyword Args:
        network_timeout (float): seconds a download may stall before it fails.
            Defaults to ``30.0``.

    The memory-mapped cache ``<root>/<id>`` (``root`` defaults to TorchRL's
    ``~/.cache/torchrl/d4rl``) is written atomically and checked on every load
    (:mod:`torchrl_misa.data.cache`); a damaged one is rebuilt from the source,
    with a warning saying what was wrong. With no cache and no network the
    load fails at once with :class:`~torchrl_misa.data.DatasetUnavailableError`,
    which says what to bring where. A dataset with no episode end at all loads
    with a warning.

    Samples are TensorDicts of transitions with ``observation``, ``action``,
    ``("next", "observation")``, ``("next", "reward")``, ``("next", "done")``,
    ``("next", "terminated")`` and ``("next", "truncated")`` (flags of shape
    ``[B, 1]``). ``self.metadata`` is a dict of the file's ``metadata/*`` when
    the file was read by this load (empty for a load from the cache).
    """

    def __init__(
        self,
        dataset_id: str,
        batch_size: int,
        *,
        network_timeout: float = 30.0,
        root: str | Path | None = None,
        download: bool | str = True,
        split_trajs: bool = False,
        use_truncated_as_done: bool = True,
        **kwargs,
    ):
        if not kwargs.pop("direct_download", True) or kwargs.get("from_env"):
            raise ValueError(
                f"{type(self).__name__} reads D4RL's HDF5 files itself: "
                "direct_download=False and from_env=True (the d4rl package) are not "
                "supported; use TorchRL's D4RLExperienceReplay for those."
            )
        if root is None:
            root = torchrl_cache_dir("d4rl")
        self.network_timeout = network_timeout
        self.metadata: dict = {}
        self.root = root
        self.dataset_id = dataset_id
        self.use_truncated_as_done = use_truncated_as_done
        # another run loading the same dataset waits until this one has opened it
        with cache_lock(self.data_path):
            data = self._checked_cache(self.data_path, download, split_trajs)
            _warn_if_no_episode_end(data, dataset_id)
            source = self._local_source()
            if source is not None:
                self.metadata = read_metadata(source)
            # the cache is in place and checked: TorchRL's class memory-maps it
            super().__init__(
                dataset_id,
                batch_size,
                root=root,
                download=True,
                direct_download=True,
                split_trajs=split_trajs,
                use_truncated_as_done=use_truncated_as_done,
                **kwargs,
            )

    # -- the cache ------------------------------------------------------------
    def _checked_cache(self, cache: Path, download, split_trajs: bool):
        """The checked content of ``cache``, built (again) from the source if needed."""
        source = self._local_source()
        expected = {
            "source_rows": _source_rows(source) if source is not None else None,
            "split_trajs": split_trajs,
        }
        if cache.exists() and download != "force":
            try:
                # without the source at hand, a cache from TorchRL's stock
                # class (no check file) is the only copy: accept it
                return open_cache(cache, require_check=source is not None, **expected)
            except CacheDamagedError as err:
                if not download:
                    raise CacheDamagedError(
                        f"{err} Pass download=True (the default) to rebuild it."
                    ) from err
                warnings.warn(
                    f"Rebuilding the cache of dataset {self.dataset_id!r}: {err}",
                    stacklevel=3,
                )
        elif not download:
            raise RuntimeError(f"The dataset could not be found in {cache}.")
        discard(cache)
        dataset = self._get_dataset_direct_download(self.dataset_id, {})
        rows = self._source_rows_read
        if split_trajs:
            dataset = split_trajectories(dataset)
            dataset["next", "done"][:, -1] = True
        write_cache(cache, dataset, source_rows=rows, split_trajs=split_trajs)
        return open_cache(cache, source_rows=rows, split_trajs=split_trajs)

    # -- where the raw file comes from -------------------------------------
    def _local_source(self) -> Path | None:
        """The source file when it is on this machine, else ``None`` (a download)."""
        d4rl_url(self.dataset_id)  # an unknown id fails before anything else
        return None

    def _raw_file(self, name: str, tmpdir: Path) -> Path:
        """D4RL's file of ``name``, downloaded into ``tmpdir``."""
        url = d4rl_url(name)
        path = tmpdir / Path(urllib.parse.urlsplit(url).path).name
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.network_timeout)  # a stall fails, not hangs
        try:
            urllib.request.urlretrieve(url, path)
        except OSError as err:
            raise DatasetUnavailableError(
                f"D4RL dataset {name!r} is not in TorchRL's cache ({self.data_path}) "
                f"and could not be downloaded from {url} ({type(err).__name__}: "
                f"{err}). On a machine without network, copy a cache folder made by "
                f"D4RLExperienceReplay elsewhere to {self.data_path}, or bring the "
                f"D4RL file and load it with 'd4rl_file:/path/to/{path.name}'. To "
                f"run without D4RL, use the shipped dataset 'd4rl_file:{DEMO_DATASET}' "
                "(the `demo` preset of the training script)."
            ) from err
        finally:
            socket.setdefaulttimeout(old)
        return path

    def _get_dataset_direct_download(self, name, env_kwargs):
        if env_kwargs:
            raise RuntimeError(
                f"Cannot pass env_kwargs with direct download; got {list(env_kwargs)}."
            )
        # as TorchRL does, a downloaded file only lives until it is converted
        with tempfile.TemporaryDirectory() as tmpdir:
            path = self._raw_file(name, Path(tmpdir))
            validate_d4rl_hdf5(path)
            raw, metadata = read_d4rl_hdf5(path)
        self._source_rows_read = int(raw.batch_size[0])
        dataset = self._process_data_from_env(raw)
        self.metadata = metadata
        return dataset

    def _process_data_from_env(self, dataset, env=None):
        has_next = "next_observations" in dataset.keys()
        out = super()._process_data_from_env(repeat_last_row(dataset), env)
        # unknown next states are stored as zeros, as TorchRL does
        unknown = unknown_next_observation(out, has_next_observations=has_next)
        out["next", "observation"][unknown] = 0
        return out


class D4RLFileExperienceReplay(OfflineD4RLExperienceReplay):
    """A local D4RL-layout HDF5 file as a TorchRL replay buffer (no network).

    The file is checked first (HDF5, required keys, one row per transition,
    finite values, actions in ``[-1, 1]``); a bad file raises
    :class:`~torchrl_misa.data.DatasetFormatError` naming the key. It is
    then converted by TorchRL's D4RL code (with the fixes above) and
    memory-mapped under ``<root>/<stem>-<hash>`` (``root`` defaults to
    ``~/.cache/torchrl/d4rl_file``; the hash covers path, size and
    modification time, so an edited file is read again).

    Args:
        path: the ``.hdf5`` file.
        batch_size: sampling batch size.

    Keyword Args:
        root: cache folder. Other keyword arguments go to
            :class:`~torchrl.data.datasets.D4RLExperienceReplay`.

    ``self.metadata`` holds the file's ``metadata/*`` as python values and
    ``self.file_path`` the resolved path.

    Examples:
        >>> import tempfile, numpy as np
        >>> from torchrl.data.datasets import load_dataset
        >>> import torchrl_misa.data  # registers the "d4rl_file" prefix
        >>> from torchrl_misa.data.hdf5 import write_d4rl_hdf5
        >>> n = 6
        >>> data = dict(observations=np.arange(n * 3, dtype="f4").reshape(n, 3),
        ...             actions=np.zeros((n, 1), "f4"), rewards=np.arange(n, dtype="f4"),
        ...             terminals=np.zeros(n, bool), timeouts=np.eye(n, dtype=bool)[-1],
        ...             next_observations=np.arange(3, n * 3 + 3, dtype="f4").reshape(n, 3))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_d4rl_hdf5(f"{d}/toy.hdf5", data, {"env_id": "Pendulum-v1"})
        ...     rb = load_dataset(f"d4rl_file:{path}", batch_size=4, root=f"{d}/cache")
        ...     batch = rb.sample()
        ...     print(len(rb), batch["next", "done"].shape, rb.metadata["env_id"])
        6 torch.Size([4, 1]) Pendulum-v1
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        root: str | Path | None = None,
        **kwargs,
    ):
        path = Path(path).expanduser().resolve()
        check_not_a_folder(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Dataset file {path} does not exist. Make one with "
                "`python tools/generate_dataset.py` (in the source tree) or use "
                f"the shipped {DEMO_DATASET}."
            )
        self.file_path = path
        if root is None:
            root = torchrl_cache_dir("d4rl_file")
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        cache_id = f"{path.stem}-{hashlib.sha1(key).hexdigest()[:12]}"
        super().__init__(cache_id, batch_size, root=root, **kwargs)

    def _local_source(self) -> Path:
        return self.file_path

    def _raw_file(self, name: str, tmpdir: Path) -> Path:
        return self.file_path
