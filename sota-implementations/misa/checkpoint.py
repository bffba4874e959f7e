"""Checkpoints of the MISA offline script: atomic saves, integrity checks, resume rules.

A checkpoint file holds a format tag, a one-line header (format version, payload
size, sha256 of the payload) and the payload: ``torch.save`` of a dict of
tensors and plain Python values, read back with ``weights_only=True`` (no code
runs on load). A save writes a temporary file in the same folder, syncs it to
disk and renames it over the previous checkpoint, so the folder holds either
the old or the new checkpoint, never a partial one. Each writer has its own
temporary name (``last.pt.<host>.<pid>.<random>.tmp``), and those left by dead
processes of this host are removed.

A run holds a lock on its checkpoint folder (:func:`run_lock`, ``flock`` on
``last.pt.lock``) for its whole life: a second run in the same folder is
refused at start; the system releases the lock when the holder dies, however
it dies. A resumed run must match its checkpoint's whole configuration (but
:data:`MAY_CHANGE`) and dataset content (:func:`check_same_dataset`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no run lock
    fcntl = None

import torch

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
_TAG = b"misa_offline.py checkpoint\n"
_HEADER = "format {version:04d} size {size:020d} sha256 {sha256}\n"
_HEADER_RE = re.compile(rb"format (\d{4}) size (\d{20}) sha256 ([0-9a-f]{64})\n")
_HEADER_LEN = len(_HEADER.format(version=0, size=0, sha256="0" * 64))

# Config entries a resumed run may change: how long it runs, where and how it
# logs and saves, and how fast it computes (the device, compilation). Every
# other entry must equal the checkpoint's. A key ending in ".*" covers a section.
MAY_CHANGE = (
    "optim.gradient_steps",  # the budget, at least the checkpoint's step
    "optim.device",
    "optim.num_threads",
    "logger.*",
    "checkpoint.interval",
    "checkpoint.dir",
    "compile.*",
    "loss.compile_sampler",
    "replay_buffer.root",  # where the cache lives; its content is checked
    "resume",
)

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read or resumed; the message says what to do."""


# ---------------------------------------------------------------- writing
class _HashingWriter:
    """Writes through to ``file`` while hashing and counting the bytes."""

    def __init__(self, file) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        written = self._file.write(data)
        self.sha256.update(data)
        self.size += written
        return written

    def flush(self) -> None:
        self._file.flush()


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (torch.save reports a failed write as a RuntimeError)."""
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _describe(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on device"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return str(err)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes ``state`` to ``path`` atomically, with a format tag and a sha256.

    On a failed write (a full disk, a lost mount) the partial file is removed,
    the previous checkpoint at ``path`` stays as it was and a
    :class:`CheckpointError` says why.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(
        f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    )
    try:
        with open(tmp, "wb") as f:
            f.write(_TAG)
            f.write(b" " * _HEADER_LEN)  # filled in once the payload's hash is known
            writer = _HashingWriter(f)
            torch.save(state, writer)
            f.seek(len(_TAG))
            header = _HEADER.format(
                version=FORMAT_VERSION,
                size=writer.size,
                sha256=writer.sha256.hexdigest(),
            )
            f.write(header.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = _os_error(err)
        if cause is None:
            raise
        kept = (
            "the previous checkpoint there is intact"
            if path.exists()
            else "no checkpoint was written"
        )
        raise CheckpointError(
            f"Could not save the checkpoint {path}: {_describe(cause)}; {kept}."
        ) from err
    try:
        _fsync_folder(path.parent)
    except OSError as err:  # the new checkpoint is in place; only a crash could undo it
        log.warning("Saved %s, but could not sync its folder: %s.", path, err)


def remove_stale_temporaries(path: str | Path) -> None:
    """Deletes temporaries of ``path`` left by writers that died on this host.

    A temporary is named ``<name>.<host>.<pid>.<random>.tmp``: one whose
    process is alive, or of another host, is left alone.
    """
    path = Path(path)
    host = socket.gethostname()
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 1 :].rsplit(".", 3)
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would signal it there, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Makes the rename durable: a crash right after it keeps the new file."""
    if not hasattr(os, "O_DIRECTORY"):  # not on POSIX: the rename is all there is
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading
def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or ``path/last.pt`` for a folder."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict:
    """Reads a checkpoint written by :func:`save_checkpoint`, after checking it.

    An empty, truncated, corrupted or foreign file raises a
    :class:`CheckpointError` that names the file and what to do.
    """
    path = find_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path} (expected a {CHECKPOINT_NAME} file or a folder "
            "holding one)."
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err}.") from None
    payload = _checked_payload(path, data)
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:
        first_line = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise _refuse(
            path,
            f"passed its integrity check but its content was refused ({first_line})",
        ) from None


def _refuse(path: Path, what: str) -> CheckpointError:
    err = CheckpointError(
        f"{path} {what}; move it away to start afresh (`mv {path} {path}.bad`), or "
        "pass resume=<another checkpoint> or checkpoint.dir=<another folder>."
    )
    err.what = what  # the file's fault alone, for callers that advise otherwise
    return err


def _checked_payload(path: Path, data: bytes) -> bytes:
    def refuse(what: str) -> CheckpointError:
        return _refuse(path, what)

    if not data:
        raise refuse("is empty (0 bytes): it is not a checkpoint")
    if not data.startswith(_TAG):
        if _TAG.startswith(data):
            raise refuse(f"is truncated ({len(data)} bytes)")
        kind = "a torch file" if data.startswith(b"PK\x03\x04") else "a file"
        raise refuse(
            f"is {kind} that is not a checkpoint of misa_offline.py (no format tag; "
            "checkpoints before the tag was introduced cannot be resumed)"
        )
    match = _HEADER_RE.match(data, len(_TAG))
    if match is None:
        if len(data) < len(_TAG) + _HEADER_LEN:
            raise refuse(f"is truncated ({len(data)} bytes)")
        raise refuse("has a corrupted header")
    version, size, sha256 = int(match[1]), int(match[2]), match[3].decode()
    if version > FORMAT_VERSION:
        raise refuse(
            f"is in checkpoint format {version}, newer than this script's "
            f"({FORMAT_VERSION}); update the script"
        )
    payload = data[match.end() :]
    if len(payload) < size:
        raise refuse(f"is truncated ({len(payload)} of {size} payload bytes)")
    if len(payload) > size or hashlib.sha256(payload).hexdigest() != sha256:
        raise refuse("is corrupted (its content does not match its sha256)")
    return payload


# ----------------------------------------------------------------- folder
def check_folder_writable(folder: str | Path) -> None:
    """Creates ``folder`` and writes a file in it, or says which folder to pass instead."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as f:
            f.write(b"0")
            f.flush()
    except OSError as err:
        raise CheckpointError(
            f"The checkpoint folder {folder} is not writable ({_describe(err)}); "
            "pass checkpoint.dir=<a writable folder>."
        ) from None


def check_space(folder: str | Path, needed_bytes: int) -> None:
    """Stops now, not at the first save hours in, when ``folder`` lacks the space."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise CheckpointError(
            f"Not enough space for checkpoints in {folder}: {_size(free)} free, "
            f"{_size(needed_bytes)} needed (a save writes the new checkpoint next to "
            "the previous one); free space there or pass "
            "checkpoint.dir=<a folder with space>."
        )


def _size(n: int) -> str:
    """MiB and the exact bytes: two different sizes never print the same."""
    return f"{n / 2**20:.2f} MiB ({n} bytes)"


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Holds the run's lock on the checkpoint ``folder`` (``flock`` on ``last.pt.lock``).

    A second run in the folder is refused with a :class:`CheckpointError`
    naming the holder. The lock dies with its process, however it ends (even
    ``kill -9``): nothing is left to clean up. The lock file itself stays.
    Where ``flock`` is not supported (some network file systems), the run goes
    on unlocked, with a warning.
    """
    folder = Path(folder)
    path = folder / f"{CHECKPOINT_NAME}.lock"
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(
            f"The checkpoint folder {folder} is not writable ({_describe(err)}); "
            "pass checkpoint.dir=<a writable folder>."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise CheckpointError(
                f"Another run is using the checkpoint folder {folder} "
                f"({holder or 'a process'}); two runs would overwrite each other's "
                "checkpoints. Wait for it to end, or start this one in another folder: "
                "`... hydra.run.dir=<new folder>` (or checkpoint.dir=<new folder>)."
            ) from None
        except OSError as err:
            log.warning(
                "Cannot lock %s (%s): nothing stops a second run in that folder.",
                path,
                err,
            )
        else:
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0
            )
        yield
    finally:
        os.close(fd)  # releases the lock


class _CountingSink:
    """A write-only file that keeps nothing but the count of bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data) -> int:
        self.size += memoryview(data).nbytes
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass


def checkpoint_nbytes(state: dict) -> int:
    """The size of the file :func:`save_checkpoint` writes for ``state``, without writing it."""
    sink = _CountingSink()
    torch.save(state, sink)
    return len(_TAG) + _HEADER_LEN + sink.size


# --------------------------------------------------------------- resuming
_ABSENT = "<absent>"


def _get(config: dict, key: str):
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def _as_override(value) -> str:
    """A value as it is written on hydra's command line."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _leaves(config: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for every entry of a nested dict (lists are values)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{name}."))
        else:
            out[name] = value
    return out


def _may_change(key: str) -> bool:
    return any(
        key == rule or (rule.endswith(".*") and key.startswith(rule[:-1]))
        for rule in MAY_CHANGE
    )


def config_differences(saved: dict, now: dict, step: int) -> list[tuple[str, str]]:
    """What keeps a run with config ``now`` from continuing a checkpoint.

    Every entry must be equal, except those of :data:`MAY_CHANGE`, and
    ``online.*`` while the checkpoint has done no online update (an offline
    run may be fine-tuned online); ``optim.gradient_steps`` must be at least
    the checkpoint's step, and equal to the checkpoint's once that step is
    past it (in the online phase).

    Args:
        saved: the resolved config stored in the checkpoint.
        now: the resolved config of the run that resumes.
        step: the checkpoint's step.

    Returns:
        ``(key: checkpoint value vs now, the override that matches the checkpoint)``
        for each difference; empty when the run can continue.

    Examples:
        >>> saved = {"env": {"seed": 0}, "optim": {"gradient_steps": 40}}
        >>> now = {"env": {"seed": 1}, "optim": {"gradient_steps": 10}}
        >>> for line, override in config_differences(saved, now, step=20):
        ...     print(line, "|", override)
        env.seed: checkpoint 0 vs now 1 | env.seed=0
        optim.gradient_steps: checkpoint step 20 vs now 10 (the budget must be at least the checkpoint's step) | optim.gradient_steps=40
    """
    found = []
    old_leaves, new_leaves = _leaves(saved), _leaves(now)
    saved_budget = _get(saved, "optim.gradient_steps")
    # no online update done yet: an offline run may go on with an online phase
    offline_only = step <= saved_budget
    for key in dict.fromkeys([*old_leaves, *new_leaves]):
        if _may_change(key) or (offline_only and key.startswith("online.")):
            continue
        old, new = old_leaves.get(key, _ABSENT), new_leaves.get(key, _ABSENT)
        if old != new:
            line = f"{key}: checkpoint {_as_override(old)} vs now {_as_override(new)}"
            if old is _ABSENT:  # hydra's syntax to drop a key, and to add one
                override = f"~{key}"
            elif new is _ABSENT:
                override = f"+{key}={_as_override(old)}"
            else:
                override = f"{key}={_as_override(old)}"
            found.append((line, override))
    budget = _get(now, "optim.gradient_steps")
    if step > saved_budget:
        # past the offline updates: the online phase's steps count from there
        if budget != saved_budget:
            found.append(
                (
                    f"optim.gradient_steps: checkpoint {saved_budget} vs now {budget} (the "
                    f"checkpoint, at step {step}, is in the online phase)",
                    f"optim.gradient_steps={saved_budget}",
                )
            )
    elif budget < step:
        found.append(
            (
                f"optim.gradient_steps: checkpoint step {step} vs now {budget} "
                "(the budget must be at least the checkpoint's step)",
                f"optim.gradient_steps={max(step, saved_budget)}",
            )
        )
    return found


def _check_compatible(state: dict, config: dict, path: Path) -> None:
    """Raises a :class:`CheckpointError` listing what differs from the checkpoint."""
    found = config_differences(state["config"], config, state["step"])
    if found:
        lines = "\n".join(f"  {line}" for line, _ in found)
        overrides = " ".join(override for _, override in found)
        raise CheckpointError(
            f"The checkpoint {path} (step {state['step']}) was written with another "
            f"configuration:\n{lines}\nEither continue it with the checkpoint's "
            f"values: `... {overrides}`,\nor start a new run in another folder: "
            "`... hydra.run.dir=<new folder>` (or checkpoint.dir=<new folder>)."
        )


def resume_state(resume: str | Path | None, own: Path, config: dict) -> dict | None:
    """The checkpoint the run continues, checked against ``config``; None for a new run.

    The checkpoint's content is returned with ``"path"``: the file read.

    Args:
        resume: ``resume=`` of the config: a checkpoint file or its folder, or None.
        own: the file the run saves its checkpoints to. When it exists, the run
            continues it instead of overwriting it (a requeued job finds its
            progress). With ``resume=`` set too, both must be checkpoints of
            one run (the run folder's one then continues ``resume=``'s): the
            later one is taken; two different runs' are refused, with the
            commands to pick either.
        config: the run's resolved config; it must match the checkpoint's
            but for :data:`MAY_CHANGE` (:func:`config_differences`).
    """
    if resume is None:
        if not own.exists():
            return None
        path, state = own, load_checkpoint(own)
        note = (
            "this run's checkpoint folder already holds it; to start afresh pass "
            "checkpoint.dir=<new folder> or hydra.run.dir=<new folder>"
        )
    else:
        path = find_checkpoint(resume)
        state, note = load_checkpoint(path), "as resume= asks"
        if own.exists() and own.resolve() != path.resolve():
            own_state = _load_own(own, path)
            if own_state["run_id"] != state["run_id"]:
                raise CheckpointError(
                    f"This run's checkpoint folder holds {own} (step "
                    f"{own_state['step']}), a checkpoint of another run than "
                    f"resume={path} (step {state['step']}); resuming would overwrite "
                    "it. Either continue the folder's run: drop resume=, or continue "
                    f"resume={path} in another folder: `... resume={path} "
                    "checkpoint.dir=<new folder>`."
                )
            note = f"the later of resume= and {own}, which continues the same run"
            if own_state["step"] >= state["step"]:
                path, state = own, own_state
    _check_compatible(state, config, path)
    log.info("Resuming from %s (step %d): %s.", path, state["step"], note)
    return {**state, "path": path}


def _load_own(own: Path, resume: Path) -> dict:
    """The run folder's checkpoint next to a sound ``resume=``; a damaged one is named."""
    try:
        return load_checkpoint(own)
    except CheckpointError as err:
        what = getattr(err, "what", None)
        if what is None:
            raise
        raise CheckpointError(
            f"resume={resume} is a sound checkpoint, but this run's checkpoint folder "
            f"holds {own}, which {what}. Resuming here would overwrite it: move it "
            f"away (`mv {own} {own}.bad`) and rerun, or keep it and continue "
            f"resume={resume} in another folder: `... resume={resume} "
            "checkpoint.dir=<new folder>`."
        ) from None


# ------------------------------------------------------------ the data
def check_same_dataset(state: dict, sha256: str, dataset: str, path: Path) -> None:
    """Refuses to resume a checkpoint trained on other data than ``dataset``'s.

    Args:
        state: the checkpoint; ``state["dataset_sha256"]`` is the fingerprint
            of the transitions it was trained on (absent in older checkpoints:
            then nothing is checked, with a warning).
        sha256: the fingerprint of the transitions loaded now
            (:func:`torchrl_misa.data.content_sha256`).
        dataset: ``replay_buffer.dataset``, for the message.
        path: the checkpoint file, for the message.
    """
    saved = state.get("dataset_sha256")
    if saved is None:
        log.warning(
            "%s does not record its dataset's content: cannot check that %s is "
            "the data it was trained on.",
            path,
            dataset,
        )
        return
    if saved != sha256:
        raise CheckpointError(
            f"The checkpoint {path} (step {state['step']}) was trained on other data: "
            f"the content of replay_buffer.dataset={dataset} has changed since "
            f"(sha256 of the transitions: checkpoint {saved[:16]}... vs now "
            f"{sha256[:16]}...). Restore the data it was trained on, or start a new "
            "run in another folder: `... hydra.run.dir=<new folder>` (or "
            "checkpoint.dir=<new folder>)."
        )


def drop_logged_after(folder: str | Path, step: int) -> None:
    """Removes the csv logs' rows after ``step``, which a resumed run logs again.

    A run killed after its last checkpoint has logged steps it will redo; its
    ``summary`` entries are logged again at the end, so all of theirs go.
    ``folder`` is the csv logger's experiment folder (``scalars/*.csv`` rows
    are ``step,value``).
    """
    for csv in sorted(Path(folder).glob("scalars/**/*.csv")):
        summary = "summary" in csv.relative_to(folder).parts[:-1]
        lines = csv.read_text().splitlines(keepends=True)
        kept = [
            line
            for line in lines
            if not summary
            and line.split(",", 1)[0].strip().isdigit()
            and int(line.split(",", 1)[0]) <= step
        ]
        if kept != lines:
            tmp = csv.with_name(f"{csv.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, csv)


class DeferredPreemption:
    """Holds a scheduler's preemption signal until the loop can save a checkpoint.

    Inside a submitit job (``hydra/launcher=submitit_*``) the preemption
    signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) calls submitit's
    handler, which requeues the job by raising ``SystemExit`` wherever the
    main thread is, e.g. halfway through an update. While this context is
    open the signal only sets :attr:`pending`; :meth:`fire` (after the loop
    has saved) hands it to that handler. Elsewhere it does nothing.
    """

    def __init__(self) -> None:
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.signum = getattr(signal, f"SIG{name}", None)
        self.pending = None
        self._handler = None

    def __enter__(self) -> DeferredPreemption:
        if self.signum is not None:
            handler = signal.getsignal(self.signum)
            if callable(handler):  # a handler of the job's, not SIG_DFL
                self._handler = handler
                signal.signal(self.signum, self._defer)
        return self

    def _defer(self, signum, frame) -> None:
        log.warning("Preemption signal: saving a checkpoint after this update.")
        self.pending = (signum, frame)

    def fire(self) -> None:
        """Calls the job's handler with a signal that arrived (it may exit)."""
        if self.pending is not None and self._handler is not None:
            signal.signal(self.signum, self._handler)
            pending, self.pending = self.pending, None
            self._handler(*pending)

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            signal.signal(self.signum, self._handler)
            if exc[0] is None:
                self.fire()
