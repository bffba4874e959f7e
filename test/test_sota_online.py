"""The script's online phase: collection on the shipped set, exact resume, options.

Runs the script's ``train`` in this process on the shipped Pendulum set with
tiny networks; an interruption is simulated by stopping right after a save.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from torchrl_misa.data import DEMO_DATASET_PATH
from torchrl.data import LazyTensorStorage

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "misa"
TINY = [
    "preset=demo",
    f"replay_buffer.dataset={DEMO_DATASET_PATH}",
    "replay_buffer.batch_size=16",
    "network.actor_hidden_sizes=[16,16]",
    "network.critic_hidden_sizes=[16,16]",
    "loss.num_mcmc_samples=4",
    "loss.num_burnin=2",
    "logger.eval_envs=2",
    "logger.eval_steps=20",
    "logger.backend=",
    "logger.progress_bar=false",
    "logger.log_interval=10",
    "optim.gradient_steps=10",
    "online.frames=120",
    "online.frames_per_batch=40",
]


def make_cfg(*overrides, log_dir="unused"):
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.2"):
        return compose(
            "config", overrides=[*TINY, f"logger.log_dir={log_dir}", *overrides]
        )


class _Stop(Exception):
    pass


def train(script, out_dir: Path, *overrides, stop_after_save_at=None, monkeypatch=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    if stop_after_save_at is not None:
        save = script.checkpoint.save_checkpoint

        def save_then_stop(path, state):
            save(path, state)
            if state["step"] == stop_after_save_at:
                raise _Stop  # as if killed right after this save

        monkeypatch.setattr(script.misa_offline, "save_checkpoint", save_then_stop)
    try:
        cfg = make_cfg(*overrides, log_dir=out_dir)
        return script.misa_offline.train(cfg, out_dir)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


def online_buffers(script, run_dir: Path) -> tuple[list, dict]:
    """The online transitions of each agent in the run's checkpoint, and the checkpoint."""
    state = script.checkpoint.load_checkpoint(run_dir / "checkpoints")
    rows = []
    for buffer_state in state["online"]["buffer"]["online"]:
        storage = LazyTensorStorage(1)  # TorchRL's storage reads its own state back
        storage.load_state_dict(buffer_state["_storage"])
        rows.append(storage[:])
    return rows, state


def test_collected_transitions_are_pendulum_steps(misa_script, tmp_path):
    """Every stored online row is one step of Pendulum's dynamics and reward.

    Written out from Gymnasium's Pendulum-v1 (g = 10, m = l = 1, dt = 0.05,
    torque u = 2 a in [-2, 2], speed clipped at 8): an independent check that
    the collector's observations, actions, rewards and next observations line up.
    """
    summary = train(
        misa_script,
        tmp_path,
        "online.utd=0.5",
        "online.envs=2",
        "logger.eval_iter=1000",
    )
    # 10 offline updates, then 120 frames at 0.5 update per frame
    assert summary["steps"] == 10 + 60 and summary["online_frames"] == 120
    (rows,), state = online_buffers(misa_script, tmp_path)
    assert len(rows) == 120 and state["online"]["frames"] == 120
    cos, sin, speed = rows["observation"].double().unbind(-1)
    torque = 2 * rows["action"].double().squeeze(-1).clamp(-1, 1)
    theta = torch.atan2(sin, cos)
    reward = -(theta**2 + 0.1 * speed**2 + 0.001 * torque**2)
    torch.testing.assert_close(
        rows["next", "reward"].double().squeeze(-1), reward, atol=1e-4, rtol=0
    )
    new_speed = (speed + (15 * torch.sin(theta) + 3 * torque) * 0.05).clamp(-8, 8)
    new_theta = theta + new_speed * 0.05
    next_obs = torch.stack([new_theta.cos(), new_theta.sin(), new_speed], -1)
    torch.testing.assert_close(
        rows["next", "observation"].double(), next_obs, atol=1e-4, rtol=0
    )
    # the policy was sampled (exploration), not its mean: actions vary widely
    assert rows["action"].std() > 0.1
    assert not any(math.isnan(s) for _, s in summary["scores"])


@pytest.mark.parametrize("num_agents", [1, 2])
def test_resume_in_the_online_phase_is_exact(
    misa_script, tmp_path, monkeypatch, num_agents
):
    """Stopped right after the save at step 60 (mid-round), then rerun: as uninterrupted."""
    args = [
        f"num_agents={num_agents}",
        "checkpoint.interval=30",
        "logger.eval_iter=45",
        "online.loss.bc_weight=0.2",
        "online.offline_fraction=0.25",
    ]
    full = train(misa_script, tmp_path / "full", *args)
    with pytest.raises(_Stop):
        train(
            misa_script,
            tmp_path / "stopped",
            *args,
            stop_after_save_at=60,
            monkeypatch=monkeypatch,
        )
    resumed = train(misa_script, tmp_path / "stopped", *args)
    assert json.dumps(full["scores"]) == json.dumps(resumed["scores"])
    assert full["steps"] == resumed["steps"] == 130
    a, state_a = online_buffers(misa_script, tmp_path / "full")
    b, state_b = online_buffers(misa_script, tmp_path / "stopped")
    assert len(a) == len(b) == num_agents
    for rows_a, rows_b in zip(a, b):
        assert len(rows_a) == 120
        for key, value in rows_a.items(True, True):
            assert torch.equal(value, rows_b.get(key)), key
    for key, value in state_a["recipe"]["loss_module"].items():
        assert torch.equal(value, state_b["recipe"]["loss_module"][key]), key
    if num_agents > 1:  # each agent collected with its own policy
        assert not torch.equal(a[0]["action"], a[1]["action"])


def test_online_options_are_checked_before_loading_data(misa_script):
    validate = misa_script.utils.validate_config
    cases = {
        "online.frames=100": "multiple of online.frames_per_batch=40",
        "online.frames_per_batch=30 online.envs=4": "multiple of online.envs=4",
        "online.utd=0.01": "must be a positive integer",
        "online.offline_fraction=1.0": r"in \[0, 1\)",
        "online.frames=-40": "must be an integer >= 0",
        "optim.gradient_steps=0 online.frames=0": "0 only with an online phase",
    }
    for overrides, match in cases.items():
        with pytest.raises(misa_script.utils.ConfigError, match=match):
            validate(make_cfg(*overrides.split()))
    validate(make_cfg("optim.gradient_steps=0"))  # online only: a valid run


def test_unknown_online_loss_option_stops_at_start(misa_script, tmp_path):
    with pytest.raises(misa_script.utils.ConfigError, match="no real-valued option"):
        train(misa_script, tmp_path, "+online.loss.no_such_weight=1.0")


def test_gradient_steps_cannot_change_once_online(misa_script):
    differences = misa_script.checkpoint.config_differences
    saved = {"optim": {"gradient_steps": 10}}
    # a checkpoint at step 30 is 20 updates into the online phase
    found = differences(saved, {"optim": {"gradient_steps": 20}}, step=30)
    assert [override for _, override in found] == ["optim.gradient_steps=10"]
    # before the switch the offline budget may still grow
    assert differences(saved, {"optim": {"gradient_steps": 20}}, step=10) == []


def test_online_rows_are_normalised_once(misa_script):
    """With normalize_observations, online rows come normalised from the env and
    the buffer does not normalise them again: undoing the dataset's statistics
    (computed here from the file) gives Pendulum observations, cos² + sin² = 1."""
    import h5py

    from torchrl_misa.data import DEMO_DATASET_PATH as path

    with h5py.File(path, "r") as f:
        obs = torch.as_tensor(f["observations"][:], dtype=torch.float64)
    loc, scale = obs.mean(0), obs.std(0, unbiased=False).clamp_min(1e-3)
    cfg = make_cfg(
        "replay_buffer.normalize_observations=true", "online.offline_fraction=0.5"
    )
    utils, cpu = misa_script.utils, torch.device("cpu")
    data = utils.make_offline_data(cfg, cpu)
    recipe = utils.make_misa_update(cfg, data, 1, cpu)
    phase = misa_script.misa_offline.OnlinePhase(cfg, data, recipe, cpu)
    batch, metrics = phase.batch(0)
    assert metrics["online/frames"] == 40
    online_rows = batch[8:]  # 8 of 16 rows offline, first
    for key in ("observation", ("next", "observation")):
        raw = online_rows[key].double() * scale + loc
        torch.testing.assert_close(
            raw[:, 0] ** 2 + raw[:, 1] ** 2,
            torch.ones(8, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )
    phase.close()


def test_an_offline_run_continues_with_an_online_phase(misa_script, tmp_path):
    """A finished offline run, rerun in its folder with online.frames, fine-tunes
    online from its checkpoint, as a run with the online phase from the start."""
    args = ["checkpoint.interval=10", "logger.eval_iter=40"]
    full = train(misa_script, tmp_path / "full", *args, "online.frames=80")
    offline = train(misa_script, tmp_path / "two", *args, "online.frames=0")
    assert offline["steps"] == 10
    resumed = train(misa_script, tmp_path / "two", *args, "online.frames=80")
    assert resumed["steps"] == full["steps"] == 90
    assert json.dumps(full["scores"]) == json.dumps(resumed["scores"])
    (a,), state_a = online_buffers(misa_script, tmp_path / "full")
    (b,), state_b = online_buffers(misa_script, tmp_path / "two")
    assert torch.equal(a["action"], b["action"])
    for key, value in state_a["recipe"]["loss_module"].items():
        assert torch.equal(value, state_b["recipe"]["loss_module"][key]), key
