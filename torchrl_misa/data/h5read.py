"""Reading D4RL-layout HDF5 files: opening, episode-end flags, metadata.

``h5py`` is imported on first use: importing this module does not need it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from torchrl_misa.data.errors import DatasetFormatError


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the test extras
        raise ImportError(
            "Reading D4RL-layout files needs h5py: `pip install h5py`."
        ) from err
    return h5py


@contextlib.contextmanager
def open_hdf5(path: str | Path):
    """``h5py.File(path, "r")``; a damaged file raises :class:`DatasetFormatError`.

    h5py reports a truncated or corrupted file (at opening, or when a damaged
    chunk is read) as a bare ``OSError``; this names the file and says what
    to do. A file that cannot be read for want of permission stays a
    ``PermissionError``.
    """
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            yield f
    except DatasetFormatError:
        raise
    except (PermissionError, FileNotFoundError):
        raise
    except OSError as err:
        raise DatasetFormatError(
            f"{path} is a damaged HDF5 file (truncated or corrupted: {err}). Copy or "
            "generate it again."
        ) from err


def as_bool_flags(values, key: str, where: str) -> np.ndarray:
    """``values`` (bool, or integers/floats that are all 0 or 1) as a bool array.

    Raises:
        DatasetFormatError: another value (e.g. ``0.5``, ``2`` or NaN), or a
            dtype that is not a number; the message names ``key``.

    Examples:
        >>> as_bool_flags(np.array([0.0, 1.0, 0.0], "f4"), "terminals", "x.hdf5")
        array([False,  True, False])
        >>> as_bool_flags(np.array([0, 2]), "timeouts", "x.hdf5")
        Traceback (most recent call last):
        ...
        torchrl_misa.data.errors.DatasetFormatError: x.hdf5: key 'timeouts' holds 2 at index (1,); episode-end flags must be bool or 0/1.
    """
    values = np.asarray(values)
    if values.dtype == np.bool_:
        return values
    if values.dtype.kind not in "biuf":
        raise DatasetFormatError(
            f"{where}: key '{key}' has dtype {values.dtype}; episode-end flags must "
            "be bool or 0/1 numbers."
        )
    bad = (values != 0) & (values != 1)  # NaN is neither
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetFormatError(
            f"{where}: key '{key}' holds {values[idx].item()} at index {idx}; episode-end "
            "flags must be bool or 0/1."
        )
    return values == 1


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Returns the file's ``metadata/*`` entries as python values (``{}`` if none).

    Nested groups are flattened with ``/`` (``metadata/policy/x`` -> ``"policy/x"``).
    """
    h5py = _h5py()
    out: dict[str, Any] = {}
    with open_hdf5(Path(path).expanduser()) as f:
        if "metadata" not in f:
            return out

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = _to_python(obj[()])

        f["metadata"].visititems(visit)
    return out


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
