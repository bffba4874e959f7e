"""Checkpoints of the MISA offline script: atomic saves, integrity checks, resume rules.

A checkpoint file holds a format tag, a one-line header (format version, payload
size, sha256 of the payload) and the payload: ``torch.save`` of a dict of
tensors and plain Python values, read back with ``weights_only=True`` (no code
runs on load). A save writes a temporary file in the same folder, syncs it to
disk and renames it over the previous checkpoint, so the folder holds either
the old or the new checkpoint, never a partial one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
_TAG = b"misa_offline.py checkpoint\n"
_HEADER = "format {version:04d} size {size:020d} sha256 {sha256}\n"
_HEADER_RE = re.compile(rb"format (\d{4}) size (\d{20}) sha256 ([0-9a-f]{64})\n")
_HEADER_LEN = len(_HEADER.format(version=0, size=0, sha256="0" * 64))

# Config entries a resumed run must share with its checkpoint: they decide the
# data the networks see, the parameters' shapes and the random streams.
RESUME_KEYS = (
    "algorithm",  # absent for MISA; the learning benchmark's baselines set it
    "num_agents",
    "env.seed",
    "replay_buffer.dataset",
    "replay_buffer.reward_processing",
    "replay_buffer.normalize_observations",
    "network.actor_hidden_sizes",
    "network.actor_activation",
    "network.critic_hidden_sizes",
    "network.critic_activation",
    "network.trainable_log_std",
)
# MISALoss options that add or reshape parameters (checked for MISA runs).
RESUME_LOSS_KEYS = ("loss.num_qvalue_nets", "loss.mi_critic", "loss.lagrange_tau")

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
    tmp = path.with_name(path.name + ".tmp")
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
    return CheckpointError(
        f"{path} {what}; move it away to start afresh (`mv {path} {path}.bad`), or "
        "pass resume=<another checkpoint> or checkpoint.dir=<another folder>."
    )


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
            f"Not enough space for checkpoints in {folder}: {free / 2**20:.1f} MiB "
            f"free, {needed_bytes / 2**20:.1f} MiB needed (a save writes the new "
            "checkpoint next to the previous one); free space there or pass "
            "checkpoint.dir=<a folder with space>."
        )


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


def config_differences(saved: dict, now: dict, step: int) -> list[tuple[str, str]]:
    """What keeps a run with config ``now`` from continuing a checkpoint.

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
    keys = RESUME_KEYS
    if _get(now, "algorithm") in (_ABSENT, "misa"):
        keys = keys + RESUME_LOSS_KEYS
    found = []
    for key in keys:
        old, new = _get(saved, key), _get(now, key)
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
    if budget < step:
        found.append(
            (
                f"optim.gradient_steps: checkpoint step {step} vs now {budget} "
                "(the budget must be at least the checkpoint's step)",
                f"optim.gradient_steps={max(step, _get(saved, 'optim.gradient_steps'))}",
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

    Args:
        resume: ``resume=`` of the config: a checkpoint file or its folder, or None.
        own: the file the run saves its checkpoints to. When it exists, the run
            continues it instead of overwriting it (a requeued job finds its
            progress). With ``resume=`` set too, both must be checkpoints of
            one run (the run folder's one then continues ``resume=``'s): the
            later one is taken; two different runs' are refused, with the
            commands to pick either.
        config: the run's resolved config; it must match the checkpoint's on
            :data:`RESUME_KEYS` (and :data:`RESUME_LOSS_KEYS` for MISA).
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
            own_state = load_checkpoint(own)
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
    return state
