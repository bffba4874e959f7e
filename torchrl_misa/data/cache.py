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

Loaders check, build and open a cache under :func:`cache_lock`, so two runs
that load the same dataset at once take turns: the second finds the first's
cache finished instead of replacing it while the first reads it.

Before a cache is written, the space it needs is checked and reserved
(:func:`reserve_space`): a memory-mapped write past the end of a full disk
kills the process with SIGBUS, with no message, so a folder without the room
(or a read-only one) raises :class:`CacheWriteError` instead, naming the
folder and the MiB needed and free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tensordict import TensorDict, TensorDictBase

from torchrl_misa.data.errors import CacheDamagedError, CacheWriteError
from torchrl_misa.data.fingerprint import key_name

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


#: room kept per file on top of the arrays' bytes (a file's last block, meta.json files)
SPACE_PER_FILE = 4096


def format_bytes(n: int) -> str:
    """``n`` bytes in MiB, with the exact count: two sizes that differ never read the same.

    Examples:
        >>> format_bytes(440_000)
        '0.42 MiB (440000 bytes)'
    """
    return f"{n / 2**20:.2f} MiB ({n} bytes)"


def _describe(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on device"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if err.errno == errno.EROFS:
        return "read-only file system"
    return err.strerror or str(err)


def _cannot_write(folder: Path, err: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"Cannot write the dataset cache in {folder} ({_describe(err)}). Pass a "
        "writable cache folder: root=<folder> (the training script: "
        "replay_buffer.root=<folder>)."
    )


def nbytes(data: TensorDictBase) -> int:
    """Bytes that memory-mapping ``data`` writes: its tensors', plus a block per file."""
    values = [v for v in data.values(True, True) if hasattr(v, "element_size")]
    files = len(values) + len(list(data.keys(True, False))) + 2
    return sum(v.numel() * v.element_size() for v in values) + SPACE_PER_FILE * files


def reserve_space(
    folder: str | Path, needed: int, shown: str | Path | None = None
) -> None:
    """Checks that ``folder`` has room for ``needed`` bytes, and reserves it.

    The free space is compared first; then a file of that size is allocated
    (``posix_fallocate``) and removed, so a quota or a file system whose free
    count is not reliable fails here, with ENOSPC, instead of in a
    memory-mapped write (SIGBUS). Another process may still take the space
    between this call and the write.

    Args:
        folder: where the files will be written.
        needed: their bytes.
        shown: the folder named in errors (default ``folder``), e.g. the
            cache root rather than a hidden build folder inside it.

    Raises:
        CacheWriteError: naming the folder and the MiB needed and free.
    """
    folder = Path(folder)
    shown = Path(shown) if shown is not None else folder
    needed = int(needed)
    # a folder that cannot be written is named as such, full or not
    placeholder = partial_folder(folder / "space", "reserve")  # one per process
    try:
        fd = os.open(placeholder, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise _cannot_write(shown, err) from err
    try:
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise _no_space(shown, needed, free)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, needed)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _no_space(shown, needed, shutil.disk_usage(folder).free) from err
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise _cannot_write(shown, err) from err
    finally:
        os.close(fd)
        placeholder.unlink(missing_ok=True)


def _no_space(folder: Path, needed: int, free: int) -> CacheWriteError:
    return CacheWriteError(
        f"Not enough space for the dataset cache in {folder}: {format_bytes(needed)} "
        f"needed, {format_bytes(free)} free. Free space there or pass another cache "
        "folder: root=<folder> (the training script: replay_buffer.root=<folder>)."
    )


def _checksums(data: TensorDictBase) -> dict[str, int]:
    keys = data.keys(True, True)
    return {
        key_name(key): zlib.crc32(data.get(key).contiguous().numpy())
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


@contextlib.contextmanager
def cache_lock(final: str | Path) -> Iterator[None]:
    """Holds an exclusive lock on the cache ``final`` for this process.

    The lock is ``fcntl.flock`` on a hidden sibling file (``.<name>.lock``),
    which the system releases when its holder dies, so a killed run leaves no
    lock behind. Without ``fcntl`` (Windows), or where the lock file cannot be
    made (a read-only cache folder, which no run can write anyway), nothing
    is locked.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, cache_lock(f"{d}/x"):
        ...     pass
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def partial_folder(final: str | Path, kind: str = "partial") -> Path:
    """A fresh hidden sibling of ``final`` (same file system), named by host and pid."""
    final = Path(final)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{kind}-{tag}"


def remove_stale_partials(final: str | Path) -> None:
    """Deletes siblings left by builds whose process has died on this host.

    Any cache's of the folder, not only ``final``'s: a build killed on a full
    disk may have been for another version of the source file. Not on
    Windows, where ``os.kill(pid, 0)`` signals the process instead of probing it.
    """
    if os.name == "nt":
        return
    final = Path(final)
    if not final.parent.is_dir():
        return
    own = re.compile(
        rf"^\..+\.[a-z]+-{re.escape(socket.gethostname())}-(\d+)-[0-9a-f]{{8}}$"
    )
    for path in final.parent.glob(".*"):
        match = own.match(path.name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)  # signal 0: is the process there?
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # another user's process: alive
            pass


def discard(folder: str | Path) -> None:
    """Removes a folder: renamed aside first, so it vanishes at once, whole."""
    folder = Path(folder)
    if not folder.exists():  # (a read-only file system refuses even that rename)
        return
    aside = partial_folder(folder, "old")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:  # absent, or another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def replace_folder(built: str | Path, final: str | Path) -> None:
    """Renames the finished folder ``built`` to ``final``, replacing any folder there.

    When another process puts a folder at ``final`` in between, ours replaces it.
    """
    built, final = Path(built), Path(final)
    while True:
        discard(final)
        try:
            os.replace(built, final)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def memmap_atomic(
    data: TensorDictBase,
    path: str | Path,
    write_extra: Callable[[Path, TensorDictBase], None] | None = None,
) -> TensorDictBase:
    """Writes ``data`` as a memory-mapped TensorDict at ``path``, all or nothing.

    The files go to a hidden sibling folder (:func:`partial_folder`) that is
    renamed to ``path`` once complete (:func:`replace_folder`), so an
    interrupted write never leaves a folder that a later load takes for a
    finished one; those left by killed processes are removed first
    (:func:`remove_stale_partials`). ``write_extra(folder, stored)`` adds
    files (a check file, metadata) before the rename. Returns the TensorDict
    memory-mapped at ``path``.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> data = TensorDict(observation=torch.arange(6.0).reshape(3, 2), batch_size=[3])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     memmap_atomic(data, f"{d}/x")["observation"].sum().item()
        15.0
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_folder(path)
    try:
        stored = data.memmap(tmp)
        if write_extra is not None:
            write_extra(tmp, stored)
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TensorDict.load_memmap(path)


def write_cache(folder: str | Path, data: TensorDictBase, **extra) -> None:
    """Memory-maps ``data`` into ``folder`` atomically, with its check file.

    The room the files need is reserved first (:func:`reserve_space`).

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
    _prepare_parent(folder)
    reserve_space(folder.parent, nbytes(data))
    try:
        memmap_atomic(
            data, folder, lambda tmp, stored: write_check_file(tmp, stored, **extra)
        )
    except OSError as err:  # e.g. another process took the space meanwhile
        raise _cannot_write(folder.parent, err) from err


def _prepare_parent(final: Path) -> None:
    """Creates ``final``'s parent and clears dead builds there; names it if it cannot.

    (Before a reservation: the space dead builds hold counts as free.)
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
    except OSError as err:
        raise _cannot_write(final.parent, err) from err


def make_partial_folder(final: str | Path) -> Path:
    """Creates and returns a fresh :func:`partial_folder` of ``final``.

    Raises:
        CacheWriteError: the cache's parent folder cannot be written
            (read-only, no permission, a file in the way), naming it.
    """
    final = Path(final)
    _prepare_parent(final)
    tmp = partial_folder(final)
    try:
        tmp.mkdir()
    except OSError as err:
        raise _cannot_write(final.parent, err) from err
    return tmp
