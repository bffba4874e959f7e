"""Reading, checking and writing D4RL-layout HDF5 files.

A D4RL file holds one row per transition, in time order:

==================== ============ ==================================================
key                  shape        meaning
==================== ============ ==================================================
``observations``     ``[N, *obs]`` state ``s_t``
``actions``          ``[N, *act]`` action ``a_t``, in ``[-1, 1]``
``rewards``          ``[N]``       reward ``r_t``
``terminals``        ``[N]``       ``s_{t+1}`` is terminal (no bootstrap)
``timeouts``         ``[N]``       the episode was cut by a time limit after ``a_t``
``next_observations`` ``[N, *obs]`` ``s_{t+1}`` (optional in D4RL, always written here)
``infos/*``          ``[N, ...]``  optional per-step extras
``metadata/*``       scalars       free-form description (task, returns, ...)
==================== ============ ==================================================

Flags (``terminals``, ``timeouts``) may be stored as bool, integers or floats
holding only 0 and 1; they are read as bool. ``rewards`` and the flags may be
``[N]`` or ``[N, 1]``. One-dimensional ``actions`` or ``observations``
(``[N]``) are read as ``[N, 1]`` (one action or observation dimension), with
a warning.

``h5py`` is imported lazily so that ``import torchrl_misa`` works without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import make_tensordict

from torchrl_misa.data.errors import DatasetFormatError
from torchrl_misa.data.h5read import _h5py, as_bool_flags, open_hdf5, read_metadata

#: keys every D4RL-layout file must have
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
#: keys that, when present, must have one row per transition
ROW_KEYS = REQUIRED_KEYS + ("timeouts", "next_observations")
#: keys whose values must all be finite
FINITE_KEYS = ("observations", "actions", "rewards", "next_observations")
#: episode-end flags, stored as bool or as 0/1 numbers
FLAG_KEYS = ("terminals", "timeouts")
#: keys holding one value per row: ``[N]`` or ``[N, 1]``
SCALAR_KEYS = ("rewards",) + FLAG_KEYS
#: keys whose rows are arrays: ``[N, *shape]`` (``[N]`` is read as ``[N, 1]``)
ARRAY_KEYS = ("observations", "actions", "next_observations")


def check_not_a_folder(path: Path) -> None:
    """Refuses a folder given where a dataset file is expected."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.hdf5"))[:5]
        holds = f" (it holds {', '.join(found)})" if found else ""
        raise DatasetFormatError(
            f"{path} is a folder, not a dataset file{holds}: pass the path of one "
            f"D4RL-layout HDF5 file, with the keys {', '.join(REQUIRED_KEYS)}."
        )


def _check_finite(name: str, values: np.ndarray, where: str) -> None:
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise DatasetFormatError(
            f"{where}: key '{name}' holds NaN or inf values (first at index "
            f"{tuple(int(i) for i in bad)}). Remove or repair those rows."
        )


def validate_d4rl_hdf5(path: str | Path, *, check_values: bool = True) -> int:
    """Checks that ``path`` is a readable D4RL-layout HDF5 file.

    Args:
        path: the file.
        check_values: also refuse NaN/inf in the float arrays, actions
            outside ``[-1, 1]`` and flags other than 0/1 (reads the whole
            file, in chunks).

    Returns:
        the number of transitions ``N``.

    Raises:
        FileNotFoundError: no such file.
        DatasetFormatError: not HDF5, a required key is missing, rows do not
            match, rewards or flags are not ``[N]``/``[N, 1]``, or values
            are bad; the message names the key.

    Examples:
        >>> import tempfile, numpy as np
        >>> from torchrl_misa.data.hdf5 import write_d4rl_hdf5, validate_d4rl_hdf5
        >>> n = 5
        >>> data = dict(observations=np.zeros((n, 3), "f4"), actions=np.zeros((n, 1), "f4"),
        ...             rewards=np.zeros(n, "f4"), terminals=np.zeros(n, bool),
        ...             timeouts=np.eye(n, dtype=bool)[-1], next_observations=np.zeros((n, 3), "f4"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_d4rl_hdf5(f"{d}/x.hdf5", data, {"env_id": "Pendulum-v1"})
        ...     validate_d4rl_hdf5(f"{d}/x.hdf5")
        5
    """
    h5py = _h5py()
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Dataset file {path} does not exist.")
    check_not_a_folder(path)
    if not h5py.is_hdf5(path):
        raise DatasetFormatError(
            f"{path} is not an HDF5 file. A D4RL-layout file is HDF5 with the keys "
            f"{', '.join(REQUIRED_KEYS)} (plus timeouts, next_observations)."
        )
    where = str(path)
    with open_hdf5(path) as f:
        for key in REQUIRED_KEYS:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DatasetFormatError(
                    f"{where}: required key '{key}' is missing (found: "
                    f"{sorted(f.keys())}). A D4RL-layout file needs "
                    f"{', '.join(REQUIRED_KEYS)}."
                )
        n = f["observations"].shape[0] if f["observations"].ndim else 0
        if n == 0:
            raise DatasetFormatError(f"{where}: key 'observations' holds no rows.")
        rows = {k: f[k] for k in ROW_KEYS if k in f}
        if "infos" in f:
            f["infos"].visititems(
                lambda name, obj: (
                    rows.__setitem__(f"infos/{name}", obj)
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
        for key, ds in rows.items():
            if ds.ndim == 0 or ds.shape[0] != n:
                raise DatasetFormatError(
                    f"{where}: key '{key}' has {ds.shape[0] if ds.ndim else 0} rows "
                    f"but 'observations' has {n}: every per-step key needs one row per "
                    "transition."
                )
        for key in SCALAR_KEYS:
            if key in f and f[key].shape[1:] not in ((), (1,)):
                raise DatasetFormatError(
                    f"{where}: key '{key}' has shape {f[key].shape}; it needs one value "
                    f"per row: [{n}] or [{n}, 1]."
                )
        if f["actions"].ndim > 2:
            raise DatasetFormatError(
                f"{where}: key 'actions' has shape {f['actions'].shape}; actions must "
                f"be [{n}, action_dim] (one flat vector per row) or [{n}]."
            )
        if "next_observations" in f and (
            f["next_observations"].shape != f["observations"].shape
        ):
            raise DatasetFormatError(
                f"{where}: key 'next_observations' has shape "
                f"{f['next_observations'].shape}, 'observations' has "
                f"{f['observations'].shape}."
            )
        if check_values:
            chunk = 1 << 16
            for key in FINITE_KEYS:
                if key not in f:
                    continue
                for start in range(0, n, chunk):
                    _check_finite(key, f[key][start : start + chunk], where)
            for start in range(0, n, chunk):
                check_action_bounds(f["actions"][start : start + chunk], where, start)
            for key in FLAG_KEYS:
                if key in f:
                    as_bool_flags(f[key][()], key, where)
    return n


def check_action_bounds(
    actions: np.ndarray, where: str, offset: int = 0, bound: float = 1.0
) -> None:
    """Raises :class:`DatasetFormatError` if any action is outside ``[-bound, bound]``."""
    actions = np.asarray(actions)
    bad = np.abs(actions) > bound
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise DatasetFormatError(
            f"{where}: key 'actions' has values outside [-{bound}, {bound}] "
            f"(e.g. {actions[tuple(idx)]!r} at row {int(idx[0]) + offset}, max |a| = "
            f"{float(np.abs(actions).max()):.4g}). Offline datasets here store actions "
            "scaled to [-1, 1]; rescale them with the env's action bounds first."
        )


def read_d4rl_hdf5(path: Path) -> tuple[Any, dict]:
    """A checked D4RL-layout file as a TensorDict of rows, and its metadata.

    ``metadata/*`` is left out of the rows and returned apart
    (:func:`~torchrl_misa.data.h5read.read_metadata`); other numeric datasets
    become nested entries (``infos/qpos`` -> ``("infos", "qpos")``).

    Flags become bool, ``[N, 1]`` rewards and flags ``[N]``, and ``[N]``
    actions or observations ``[N, 1]`` (with a warning). Integer, bool or
    float16 observations, actions and rewards become float32 (with a warning;
    integers beyond 2**24, which float32 cannot hold exactly, are refused).
    """
    import h5py

    arrays = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf":
            arrays[name] = obj[()]

    with open_hdf5(path) as f:
        for key in f.keys():
            if key == "metadata":
                continue
            if isinstance(f[key], h5py.Dataset):
                visit(key, f[key])
            else:
                f[key].visititems(lambda n, o, k=key: visit(f"{k}/{n}", o))
    for key in SCALAR_KEYS:
        if key in arrays:
            arrays[key] = arrays[key].reshape(-1)
    for key in FLAG_KEYS:
        if key in arrays:
            arrays[key] = as_bool_flags(arrays[key], key, str(path))
    for key in ARRAY_KEYS + ("rewards",):
        if key in arrays:
            arrays[key] = _as_float32(arrays[key], key, path)
    flat = [k for k in ARRAY_KEYS if k in arrays and arrays[k].ndim == 1]
    if flat:
        warnings.warn(
            f"{path}: {', '.join(repr(k) for k in flat)} stored as [N]; read as "
            "[N, 1] (one dimension per row), as TorchRL's specs expect. Store "
            "them as [N, 1] to silence this.",
            stacklevel=2,
        )
        for key in flat:
            arrays[key] = arrays[key][:, None]
    # TorchRL's converter expects a batched TensorDict, as D4RL's files give
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    raw = make_tensordict(tensors, auto_batch_size=True)
    return raw.unflatten_keys("/"), read_metadata(path)


#: the largest integer magnitude float32 holds exactly
_FLOAT32_EXACT = 2**24


def _as_float32(values, key: str, path: Path):
    """Integer, bool or float16 ``values`` as float32, with a warning; others as they are."""
    if values.dtype.kind == "f" and values.dtype.itemsize >= 4:
        return values
    if values.dtype.kind in "iu" and values.size:
        largest = int(np.abs(values.astype(np.int64)).max())
        if largest > _FLOAT32_EXACT:
            raise DatasetFormatError(
                f"{path}: key '{key}' holds {values.dtype} values up to {largest}, "
                f"which float32 cannot hold exactly (beyond {_FLOAT32_EXACT}); store "
                "it as float32 (the networks work in float32), scaled if need be."
            )
    warnings.warn(
        f"{path}: key '{key}' is stored as {values.dtype}; read as float32 (the "
        "networks work in floating point). Store it as float32 to silence this.",
        stacklevel=3,
    )
    return values.astype(np.float32)


def write_d4rl_hdf5(
    path: str | Path,
    data: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
    *,
    infos: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Writes transitions in D4RL's layout (float32 arrays, bool flags).

    Flags given as numbers must hold only 0 and 1 (:func:`as_bool_flags`).

    Args:
        path: destination; parent folders are created. Written to a temporary
            name first and renamed, so a crash never leaves a half file.
        data: ``observations``, ``actions``, ``rewards``, ``terminals``,
            ``timeouts`` and ``next_observations`` (first dimension ``N``).
        metadata: scalars or strings stored under ``metadata/<name>``.
        infos: optional per-step arrays stored under ``infos/<name>``.

    Returns:
        the path written.
    """
    h5py = _h5py()
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for key, value in data.items():
        value = np.asarray(value)
        if key in FLAG_KEYS:
            value = as_bool_flags(value, key, str(path))
        elif np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32)
        arrays[key] = value
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression="gzip", compression_opts=4)
        for key, value in (infos or {}).items():
            f.create_dataset(f"infos/{key}", data=np.asarray(value))
        for key, value in (metadata or {}).items():
            if value is None:
                continue
            f[f"metadata/{key}"] = value
    tmp.replace(path)
    return path
