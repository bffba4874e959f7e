"""Run faults of sota-implementations/misa/misa_offline.py: resume, locks, logs, messages.

The script's ``train`` runs in this process on tiny networks (BC, the cheapest
update, unless the option under test is MISA's).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_sota_misa_checkpoint import baselines, BC, make_cfg, SCRIPT_DIR

from torchrl_misa.data import write_d4rl_hdf5

SHORT = [BC, "optim.gradient_steps=2", "logger.eval_iter=2", "checkpoint.interval=2"]


@pytest.fixture
def pendulum_file(tmp_path, tiny_d4rl_file):
    return tiny_d4rl_file(tmp_path / "data" / "pendulum.hdf5", 3, 1, "Pendulum-v1")


def train(script, out_dir: Path, dataset, *overrides) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(o.startswith("replay_buffer.root=") for o in overrides):
        # the cache next to the dataset, not in the user's home
        overrides = (f"replay_buffer.root={Path(dataset).parent / 'cache'}", *overrides)
    cfg = make_cfg(dataset, *overrides, log_dir=out_dir)
    if "algorithm" in cfg:
        return baselines().train(cfg, out_dir)
    return script.misa_offline.train(cfg, out_dir)


# ------------------------------------------------------ resume: settings
def test_a_rerun_with_other_settings_is_refused(misa_script, pendulum_file, tmp_path):
    ckpt = misa_script.checkpoint
    train(misa_script, tmp_path, pendulum_file, *SHORT)
    path = tmp_path / "checkpoints" / "last.pt"
    saved = path.read_bytes()
    summary = (tmp_path / "summary.json").read_text()
    # the reruns: each resumed silently, then saved its own config
    for override, expected in [
        ("loss.mi_estimator=ba", "loss.mi_estimator: checkpoint misa vs now ba"),
        (
            "replay_buffer.clip_actions=0.5",
            "replay_buffer.clip_actions: checkpoint 0.999 vs now 0.5",
        ),
        ("loss.bc_term=false", "loss.bc_term: checkpoint true vs now false"),
        ("loss.fixed_alpha=true", "loss.fixed_alpha: checkpoint false vs now true"),
        (
            "replay_buffer.batch_size=32",
            "replay_buffer.batch_size: checkpoint 16 vs now 32",
        ),
        ("network.init=torch", "network.init: checkpoint authors vs now torch"),
    ]:
        with pytest.raises(ckpt.CheckpointError) as err:
            train(misa_script, tmp_path, pendulum_file, *SHORT, override)
        assert expected in str(err.value), override
        assert "written with another configuration" in str(err.value)
        # the finished run's record is untouched
        assert path.read_bytes() == saved
        assert (tmp_path / "summary.json").read_text() == summary


def test_settings_that_may_change_on_a_resume(
    misa_script, pendulum_file, tmp_path, caplog
):
    train(misa_script, tmp_path, pendulum_file, *SHORT)
    caplog.set_level("INFO")
    train(
        misa_script,
        tmp_path,
        pendulum_file,
        BC,
        "optim.gradient_steps=4",
        "logger.eval_iter=4",
        "checkpoint.interval=4",
        "logger.exp_name=renamed",
        "optim.device=cpu",
        f"replay_buffer.root={tmp_path / 'other_cache'}",
    )
    path = tmp_path / "checkpoints" / "last.pt"
    assert f"Resuming from {path} (step 2)" in caplog.text
    assert misa_script.checkpoint.load_checkpoint(path)["step"] == 4


def _rewrite(path: Path, scale: float) -> None:
    import h5py

    with h5py.File(path) as f:
        arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        meta = {k: f["metadata"][k][()] for k in f["metadata"].keys()}
    arrays["rewards"] = arrays["rewards"] * scale
    write_d4rl_hdf5(path, arrays, meta)


def test_a_dataset_whose_content_changed_is_refused(
    misa_script, pendulum_file, tmp_path
):
    ckpt = misa_script.checkpoint
    root = tmp_path / "cache"
    args = [*SHORT, f"replay_buffer.root={root}"]
    train(misa_script, tmp_path / "run", pendulum_file, *args)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    saved, original = path.read_bytes(), pendulum_file.read_bytes()
    _rewrite(pendulum_file, -100.0)  # same path, same config
    more = ["optim.gradient_steps=4", "logger.eval_iter=4"]
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, tmp_path / "run", pendulum_file, *args, *more)
    message = str(err.value)
    assert f"{path} (step 2) was trained on other data" in message
    assert f"replay_buffer.dataset={pendulum_file}" in message
    assert path.read_bytes() == saved
    # the file as it was (a new copy, cached anew): the run continues
    pendulum_file.write_bytes(original)
    train(misa_script, tmp_path / "run", pendulum_file, *args, *more)
    assert ckpt.load_checkpoint(path)["step"] == 4


# ------------------------------------------------------------ two runs
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from checkpoint import run_lock
    with run_lock(sys.argv[2]):
        print("locked", flush=True)
        time.sleep(120)
    """)


def test_a_second_run_in_the_folder_is_refused_until_the_first_dies(
    misa_script, pendulum_file, tmp_path
):
    ckpt = misa_script.checkpoint
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(SCRIPT_DIR), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.CheckpointError) as err:
            train(misa_script, tmp_path, pendulum_file, *SHORT)
        message = str(err.value)
        assert f"Another run is using the checkpoint folder {folder}" in message
        assert f"process {holder.pid} on {socket.gethostname()}" in message
        assert not (folder / "last.pt").exists()
    finally:
        holder.kill()  # SIGKILL: no handler of the holder runs
        holder.wait()
    train(misa_script, tmp_path, pendulum_file, *SHORT)  # not left locked
    assert ckpt.load_checkpoint(folder)["step"] == 2
    # and a run that ended (here, with an error) releases it too
    with pytest.raises(ckpt.CheckpointError):
        train(misa_script, tmp_path, pendulum_file, *SHORT, "env.seed=1")
    train(misa_script, tmp_path, pendulum_file, *SHORT)


def test_writers_do_not_share_a_temporary_name(misa_script, tmp_path):
    ckpt = misa_script.checkpoint
    path = tmp_path / "last.pt"
    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a save in progress elsewhere: the former shared name, a live writer
        # of this host, a writer of another host
        others = {
            "last.pt.tmp": b"old-style writer",
            f"last.pt.{host}.{child.pid}.0123abcd.tmp": b"live writer",
            "last.pt.elsewhere.example.1.0123abcd.tmp": b"other host",
        }
        for name, data in others.items():
            (tmp_path / name).write_bytes(data)
        stale = tmp_path / f"last.pt.{host}.{_stopped_pid()}.0123abcd.tmp"
        stale.write_bytes(b"dead writer")
        ckpt.save_checkpoint(path, {"step": 3, "w": torch.arange(5.0)})
    finally:
        child.kill()
        child.wait()
    for name, data in others.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert not stale.exists()  # a dead writer's temporary is removed
    assert torch.equal(ckpt.load_checkpoint(path)["w"], torch.arange(5.0))


def test_no_writer_is_signalled_on_windows(misa_script, tmp_path, monkeypatch):
    # os.kill(pid, 0) is no probe there: it would signal the writer's process
    path = tmp_path / "last.pt"
    other = tmp_path / f"last.pt.{socket.gethostname()}.{_stopped_pid()}.0123abcd.tmp"
    other.write_bytes(b"writer")
    kills = []
    windows = SimpleNamespace(name="nt", kill=lambda *args: kills.append(args))
    monkeypatch.setattr(misa_script.checkpoint, "os", windows)
    misa_script.checkpoint.remove_stale_temporaries(path)
    assert kills == [] and other.exists()


def _stopped_pid() -> int:
    """The id of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------- small messages
def test_space_check_prints_numbers_that_differ(
    misa_script, pendulum_file, tmp_path, monkeypatch
):
    ckpt = misa_script.checkpoint
    real_usage = shutil.disk_usage

    def with_free(free):  # in the checkpoint folder
        def usage(path):
            found = real_usage(path)
            return found._replace(free=free) if "checkpoints" in str(path) else found

        monkeypatch.setattr(shutil, "disk_usage", usage)

    with_free(1000)
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, tmp_path, pendulum_file, *SHORT)
    needed = int(re.search(r"\((\d+) bytes\) needed", str(err.value))[1])
    # one byte short: the message must still tell the two apart
    with_free(needed - 1)
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, tmp_path, pendulum_file, *SHORT)
    found = re.search(r": (.*) free, (.*) needed", str(err.value))
    assert f"({needed - 1} bytes)" in found[1] and f"({needed} bytes)" in found[2]
    with_free(needed)
    train(misa_script, tmp_path, pendulum_file, *SHORT)


def test_resume_of_a_good_file_next_to_a_damaged_one(
    misa_script, pendulum_file, tmp_path
):
    ckpt = misa_script.checkpoint
    train(misa_script, tmp_path / "a", pendulum_file, *SHORT)
    good = tmp_path / "a" / "checkpoints" / "last.pt"
    own = tmp_path / "b" / "checkpoints" / "last.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(good.read_bytes()[:100])  # damaged
    more = ["optim.gradient_steps=4", "logger.eval_iter=4"]
    with pytest.raises(ckpt.CheckpointError) as err:
        train(
            misa_script, tmp_path / "b", pendulum_file, *SHORT, *more, f"resume={good}"
        )
    message = str(err.value)
    assert f"resume={good} is a sound checkpoint" in message
    assert f"{own}, which is truncated" in message
    assert "pass resume=" not in message  # it was passed: that is no advice
    # the advice works: move the damaged file away and rerun
    command = re.search(r"\(`(mv [^`]*)`\)", message)[1].split()
    os.rename(command[1], command[2])
    train(misa_script, tmp_path / "b", pendulum_file, *SHORT, *more, f"resume={good}")
    assert ckpt.load_checkpoint(own)["step"] == 4


def _csv_rows(out_dir: Path) -> dict:
    rows = {}
    for csv in out_dir.rglob("scalars/**/*.csv"):
        name = str(csv.relative_to(next(p for p in csv.parents if p.name == "scalars")))
        rows[name] = [int(line.split(",")[0]) for line in csv.read_text().split()]
    return rows


def test_csv_logs_do_not_repeat_the_steps_after_the_last_checkpoint(
    misa_script, pendulum_file, tmp_path, monkeypatch
):
    ckpt = misa_script.checkpoint
    args = [
        BC,
        "optim.gradient_steps=6",
        "checkpoint.interval=2",
        "logger.eval_iter=3",
        "logger.log_interval=1",
        "logger.backend=csv",
    ]
    real_save = torch.save

    def save(obj, f, *rest, **kwargs):  # the run dies at its step-4 save
        if isinstance(obj, dict) and obj.get("step", 0) >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ckpt.CheckpointError, match="Stopped at step 4"):
        train(misa_script, tmp_path, pendulum_file, *args)
    monkeypatch.undo()
    assert _csv_rows(tmp_path)["train/loss_bc.csv"] == [1, 2, 3, 4]
    train(misa_script, tmp_path, pendulum_file, *args)  # resumes from step 2
    rows = _csv_rows(tmp_path)
    assert rows["train/loss_bc.csv"] == [1, 2, 3, 4, 5, 6]
    assert rows["eval/return.csv"] == [3, 6]
    assert rows["summary/final_score.csv"] == [6]
    # a rerun of the finished run logs its summary once more, not twice
    train(misa_script, tmp_path, pendulum_file, *args)
    rows = _csv_rows(tmp_path)
    assert rows["train/loss_bc.csv"] == [1, 2, 3, 4, 5, 6]
    assert rows["summary/final_score.csv"] == [6]
