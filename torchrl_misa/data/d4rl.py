"""D4RL datasets through TorchRL's :class:`D4RLExperienceReplay`, online or not.

Two classes, one reading path. Both subclass TorchRL's
:class:`~torchrl.data.datasets.D4RLExperienceReplay` and only replace where the
raw HDF5 comes from; the conversion to transitions (``observation``,
``action``, ``("next", ...)``) and the memory-mapped cache are TorchRL's own:

* :class:`OfflineD4RLExperienceReplay` (prefix ``d4rl:``) looks for the
  dataset in this order: TorchRL's cache ``<root>/<id>`` (default
  ``~/.cache/torchrl/d4rl``), D4RL's own download folder
  (``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``, file named as in D4RL's URL),
  then the network. With none of them it fails at once with a message that
  says what to copy where.
* :class:`D4RLFileExperienceReplay` (prefix ``d4rl_file:``) reads any local
  D4RL-layout file, with no network, cached under
  ``~/.cache/torchrl/d4rl_file``.

Two details differ from the stock class (both only when the file has
``next_observations``): the last transition is kept, and the next observation
of a transition cut by a time limit (``truncated`` and not ``terminated``) is
the file's ``next_observations`` row instead of zeros, so TD targets that
bootstrap through time limits see the true next state.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from tensordict import make_tensordict
from torchrl.data.datasets.d4rl import _download_dataset_from_url, D4RLExperienceReplay
from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS
from torchrl.data.datasets.utils import _get_root_dir

from torchrl_misa.data.hdf5 import read_metadata, validate_d4rl_hdf5

#: where the shipped demo dataset lives, relative to the repository root
DEMO_DATASET = "datasets/pendulum-medium-replay-v0.hdf5"
#: the same, as an absolute path (a source checkout or editable install)
DEMO_DATASET_PATH = Path(__file__).resolve().parents[2] / DEMO_DATASET


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither cached locally nor downloadable from here."""


def d4rl_download_dir() -> Path:
    """D4RL's own download folder: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``."""
    return Path(
        os.environ.get("D4RL_DATASET_DIR", os.path.expanduser("~/.d4rl/datasets"))
    )


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


def _network_error(url: str, timeout: float) -> str | None:
    """Returns why ``url``'s host cannot be reached within ``timeout`` s, or ``None``."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except Exception as err:  # DNS failure, refused, timeout, sandbox...
        return f"{type(err).__name__}: {err}"


def _read_d4rl_hdf5(path: Path) -> tuple[Any, dict]:
    """Reads a checked D4RL-layout file into a TensorDict (metadata left out)."""
    import h5py

    arrays = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf":
            arrays[name] = torch.from_numpy(obj[()])

    with h5py.File(path, "r") as f:
        for key in f.keys():
            if key == "metadata":
                continue
            if isinstance(f[key], h5py.Dataset):
                visit(key, f[key])
            else:
                f[key].visititems(lambda n, o, k=key: visit(f"{k}/{n}", o))
    # TorchRL's converter expects a batched TensorDict, as D4RL's files give
    raw = make_tensordict(arrays, auto_batch_size=True)
    return raw.unflatten_keys("/"), read_metadata(path)


class OfflineD4RLExperienceReplay(D4RLExperienceReplay):
    """TorchRL's D4RL replay buffer that also works (and fails clearly) offline.

    Takes the arguments of :class:`~torchrl.data.datasets.D4RLExperienceReplay`
    (``direct_download`` is forced to ``True``: data come from D4RL's HDF5
    files, not from the ``d4rl`` package), plus:

    Keyword Args:
        network_timeout (float): seconds allowed to reach D4RL's server before
            concluding there is no network. Defaults to ``3.0``.

    Samples are TensorDicts of transitions with ``observation``, ``action``,
    ``("next", "observation")``, ``("next", "reward")``, ``("next", "done")``,
    ``("next", "terminated")`` and ``("next", "truncated")`` (flags of shape
    ``[B, 1]``). ``self.metadata`` is a dict of the file's ``metadata/*`` when
    the file was read in this call (empty for a cached load).

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from torchrl_misa.data import OfflineD4RLExperienceReplay, write_d4rl_hdf5
        >>> n = 8  # a stand-in for D4RL's file, where D4RL keeps its downloads
        >>> data = dict(observations=np.zeros((n, 11), "f4"), actions=np.zeros((n, 3), "f4"),
        ...             rewards=np.ones(n, "f4"), terminals=np.eye(n, dtype=bool)[3],
        ...             timeouts=np.eye(n, dtype=bool)[-1], next_observations=np.ones((n, 11), "f4"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     os.environ["D4RL_DATASET_DIR"] = d
        ...     _ = write_d4rl_hdf5(f"{d}/hopper_medium-v2.hdf5", data)
        ...     rb = OfflineD4RLExperienceReplay("hopper-medium-v2", 4, root=f"{d}/cache")
        ...     del os.environ["D4RL_DATASET_DIR"]
        ...     print(len(rb), rb.storage._storage["next", "done"].sum().item())
        8 2
    """

    def __init__(
        self,
        dataset_id: str,
        batch_size: int,
        *,
        network_timeout: float = 3.0,
        **kwargs,
    ):
        kwargs.setdefault("direct_download", True)
        self.network_timeout = network_timeout
        self.metadata: dict = {}
        self._restore_next_obs = None
        super().__init__(dataset_id, batch_size, **kwargs)
        self._apply_restore()

    # -- where the raw file comes from -------------------------------------
    def _get_dataset_direct_download(self, name, env_kwargs):
        if env_kwargs:
            raise RuntimeError(
                f"Cannot pass env_kwargs with direct download; got {list(env_kwargs)}."
            )
        # as TorchRL does, a downloaded file only lives until it is converted
        with tempfile.TemporaryDirectory() as tmpdir:
            path = self._find_or_download(name, Path(tmpdir))
            validate_d4rl_hdf5(path)
            raw, metadata = _read_d4rl_hdf5(path)
        dataset = self._process_data_from_env(raw)
        self.metadata = metadata
        return dataset

    def _find_or_download(self, name: str, tmpdir: Path) -> Path:
        url = d4rl_url(name)
        local = d4rl_download_dir() / Path(urllib.parse.urlsplit(url).path).name
        if local.exists():
            return local
        why = _network_error(url, self.network_timeout)
        if why is not None:
            raise DatasetUnavailableError(
                f"D4RL dataset {name!r} not found: it is not in TorchRL's cache "
                f"({self._dataset_path}) nor in D4RL's folder ({local}), and the "
                f"server cannot be reached ({why}). On a machine without network, "
                f"either copy the cache folder made by D4RLExperienceReplay elsewhere "
                f"to {self._dataset_path}, or copy the D4RL file ({url}) to {local} "
                f"(or anywhere, then use 'd4rl_file:/path/to/{local.name}'). To run "
                f"without D4RL, use the shipped dataset 'd4rl_file:{DEMO_DATASET}' "
                "(the `demo` preset of the training script)."
            )
        old = socket.getdefaulttimeout()
        # a stalled transfer fails instead of hanging forever
        socket.setdefaulttimeout(max(self.network_timeout, 60.0))
        try:
            return Path(_download_dataset_from_url(url, str(tmpdir)))
        finally:
            socket.setdefaulttimeout(old)

    # -- the two corrections, around TorchRL's converter ---------------------
    def _process_data_from_env(self, dataset, env=None):
        has_next = "next_observations" in dataset.keys()
        if has_next:
            # the converter pairs row t with row t+1 and drops the last row;
            # with next_observations the last row is a full transition: pad it
            dataset = torch.cat([dataset, dataset[-1:]], 0)
        out = super()._process_data_from_env(dataset, env)
        if has_next and "truncated" in out["next"].keys():
            # __init__ zeroes ("next", "observation") where done; keep the true
            # next state where the episode was only cut by a time limit
            cut = (out["next", "truncated"] & ~out["next", "terminated"]).squeeze(-1)
            idx = cut.nonzero().squeeze(-1)
            self._restore_next_obs = (idx, out["next", "observation"][idx].clone())
        return out

    def _apply_restore(self):
        if self._restore_next_obs is None:
            return
        idx, values = self._restore_next_obs
        if idx.numel():
            # the storage is memory-mapped: this also fixes the cache on disk
            self._storage._storage["next", "observation"][idx] = values
        self._restore_next_obs = None


class D4RLFileExperienceReplay(OfflineD4RLExperienceReplay):
    """A local D4RL-layout HDF5 file as a TorchRL replay buffer (no network).

    The file is checked first (HDF5, required keys, one row per transition,
    finite values, actions in ``[-1, 1]``); a bad file raises
    :class:`~torchrl_misa.data.hdf5.DatasetFormatError` naming the key. It is
    then converted by TorchRL's D4RL code and memory-mapped under
    ``<root>/<stem>-<hash>`` (``root`` defaults to
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
        >>> import torchrl_misa  # registers the "d4rl_file" prefix
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
        if not path.is_file():
            raise FileNotFoundError(
                f"Dataset file {path} does not exist. Make one with "
                "`python -m torchrl_misa.data.generate` or use the shipped "
                f"{DEMO_DATASET}."
            )
        self.file_path = path
        if root is None:
            root = _get_root_dir("d4rl_file")
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        cache_id = f"{path.stem}-{hashlib.sha1(key).hexdigest()[:12]}"
        super().__init__(cache_id, batch_size, root=root, **kwargs)
        self.metadata = read_metadata(path)

    def _find_or_download(self, name: str, tmpdir: Path) -> Path:
        return self.file_path
