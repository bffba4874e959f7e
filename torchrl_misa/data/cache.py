"""Memory-mapped dataset caches, written atomically and checked when read.

TorchRL's dataset classes memory-map the converted transitions into a folder
(``<root>/<dataset id>``, one ``*.memmap`` file per entry plus ``meta.json``)
and trust any folder found there. Here a cache is:

* written atomically: built in a hidden sibling folder
  (``.<name>.partial-<host>-<pid>-<random>``), then renamed into place, so a
  load killed half-way leaves no folder under the final name;
* checked before use: it must hold ``meta.json`` and a check file
  (:data:`CHECK_FILE`) written with it, every file must have the size noted
  there (checked before anything is memory-mapped: tensordict would extend a
  short file with zeros), the rows must match the source's, and a CRC-32 of
  each transition column must match the one noted at write time.

A cache that fails is reported with what is wrong (:class:`CacheDamagedError`)
so the loader can rebuild it from its source.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import uuid
import zlib
from pathlib import Path

from tensordict import TensorDict, TensorDictBase

#: name of the check file written inside each cache folder
CHECK_FILE = "cache_check.json"
#: version of the check file's layout; other versions are rebuilt
CHECK_FORMAT = 1
#: the columns whose contents are checksummed (those the losses read)
CHECKSUM_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
)


class CacheDamagedError(RuntimeError):
    """A cache folder exists but cannot be trusted; the message says why."""


def _key_name(key) -> str:
    return key if isinstance(key, str) else "/".join(key)


def _checksums(data: TensorDictBase) -> dict[str, int]:
    keys = data.keys(True, True)
    return {
        _key_name(key): zlib.crc32(data.get(key).contiguous().numpy())
        for key in CHECKSUM_KEYS
        if key in keys
    }


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECK_FILE
    }


def write_check_file(folder: str | Path, data: TensorDictBase, **extra) -> None:
    """Notes ``data``'s rows, file sizes and column checksums in ``folder/CHECK_FILE``.

    ``data`` is the memory-mapped content of ``folder``; ``extra`` (e.g. the
    source's row count) is stored as given and compared by :func:`open_cache`.
    """
    folder = Path(folder)
    check = {
        "format": CHECK_FORMAT,
        "batch_size": list(data.batch_size),
        "files": _file_sizes(folder),
        "crc32": _checksums(data),
        **extra,
    }
    (folder / CHECK_FILE).write_text(json.dumps(check, indent=1))


def open_cache(
    folder: str | Path, *, require_check: bool = True, **expected
) -> TensorDictBase:
    """The memory-mapped content of a cache folder, once checked.

    Args:
        folder: the cache folder (must exist).

    Keyword Args:
        require_check: refuse a folder without a check file (one written by
            an older version of this package or by TorchRL's stock classes).
            With ``False`` such a folder only needs ``meta.json`` and to load.
        **expected: values the check file must hold (e.g.
            ``source_rows=1000``); ``None`` values are not compared.

    Raises:
        CacheDamagedError: saying what is wrong.
    """
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise CacheDamagedError(
            f"{folder} has no meta.json: the write that made it did not finish."
        )
    check_path = folder / CHECK_FILE
    check = None
    if check_path.is_file():
        try:
            check = json.loads(check_path.read_text())
        except ValueError as err:
            raise CacheDamagedError(f"{check_path} is not valid JSON ({err}).") from err
    elif require_check:
        raise CacheDamagedError(
            f"{folder} has no {CHECK_FILE} (written by an older version or by "
            "TorchRL's stock class), so its content cannot be checked."
        )
    if check is not None:
        if check.get("format") != CHECK_FORMAT:
            raise CacheDamagedError(
                f"{check_path} has format {check.get('format')!r}, this version "
                f"writes {CHECK_FORMAT}."
            )
        # before memory-mapping: tensordict extends a short file with zeros
        sizes = _file_sizes(folder)
        for name, size in check["files"].items():
            if name not in sizes:
                raise CacheDamagedError(f"{folder / name} is missing.")
            if sizes[name] != size:
                raise CacheDamagedError(
                    f"{folder / name} has {sizes[name]} bytes, {size} were written."
                )
        for name, value in expected.items():
            if value is not None and check.get(name) != value:
                raise CacheDamagedError(
                    f"{folder} was built with {name}={check.get(name)!r}; this load "
                    f"expects {value!r} (from the source file or the arguments)."
                )
    try:
        data = TensorDict.load_memmap(folder)
    except Exception as err:  # any unreadable layout
        raise CacheDamagedError(
            f"{folder} cannot be loaded ({type(err).__name__}: {err})."
        ) from err
    if check is not None:
        if list(data.batch_size) != check["batch_size"]:
            raise CacheDamagedError(
                f"{folder} holds {list(data.batch_size)} rows, "
                f"{check['batch_size']} were written."
            )
        sums = _checksums(data)
        for name, crc in check["crc32"].items():
            if sums.get(name) != crc:
                raise CacheDamagedError(
                    f"{folder}: the content of {name!r} differs from what was "
                    "written (checksum mismatch)."
                )
    return data


def partial_folder(final: str | Path, kind: str = "partial") -> Path:
    """A fresh hidden sibling of ``final`` to build into (same file system)."""
    final = Path(final)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{kind}-{tag}"


def remove_stale_partials(final: str | Path) -> None:
    """Deletes siblings left by builds of ``final`` whose process has died on this host."""
    final = Path(final)
    host = socket.gethostname()
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(f".{final.name}.*-{host}-*-*"):
        pid = path.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def discard(folder: str | Path) -> None:
    """Removes a cache folder: renamed aside first, so it vanishes at once."""
    folder = Path(folder)
    if not folder.exists():
        return
    aside = partial_folder(folder, "old")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def publish(built: str | Path, final: str | Path) -> None:
    """Renames the finished folder ``built`` to ``final``, replacing any folder there."""
    built, final = Path(built), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(built, final)
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    # another process finished the same cache first: ours replaces it
    discard(final)
    os.replace(built, final)


def write_cache(folder: str | Path, data: TensorDictBase, **extra) -> None:
    """Memory-maps ``data`` into ``folder`` atomically, with its check file.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> data = TensorDict(observation=torch.arange(6.0).reshape(3, 2), batch_size=[3])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_cache(f"{d}/x", data, source_rows=3)
        ...     open_cache(f"{d}/x", source_rows=3)["observation"].sum().item()
        15.0
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    tmp = partial_folder(folder)
    try:
        stored = data.memmap(tmp)
        write_check_file(tmp, stored, **extra)
        publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
