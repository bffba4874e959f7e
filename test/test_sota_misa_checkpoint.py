"""Checkpoints and the run lifecycle of sota-implementations/misa/misa_offline.py.

The script's ``train`` runs in this process (tiny networks, a few steps), so a
full disk or a broken file can be simulated by monkeypatching. The lifecycle
does not depend on the algorithm: most runs here train BC, the cheapest update.
"""

import doctest
import importlib
import errno
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type
import yaml
from hydra import compose, initialize_config_dir

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "misa"
TINY = [
    "preset=demo",
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
]
BC = "+algorithm=bc"


@pytest.fixture(scope="module")
def pendulum_file(tmp_path_factory, tiny_d4rl_file):
    return tiny_d4rl_file(
        tmp_path_factory.mktemp("data") / "pendulum.hdf5", 3, 1, "Pendulum-v1"
    )


def make_cfg(dataset, *overrides, log_dir="unused"):
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.2"):
        return compose(
            "config",
            overrides=[
                *TINY,
                f"replay_buffer.dataset={dataset}",
                f"logger.log_dir={log_dir}",
                *overrides,
            ],
        )


def baselines():
    """The learning benchmark's baselines, trained by the script's loop."""
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("baselines")


def train(script, out_dir: Path, dataset, *overrides) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = make_cfg(dataset, *overrides, log_dir=out_dir)
    if "algorithm" in cfg:  # a baseline: the same loop and checkpoints, cheaper updates
        return baselines().train(cfg, out_dir)
    return script.misa_offline.train(cfg, out_dir)


def assert_same(a, b, path=""):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


# ------------------------------------------------------------ file format
def test_checkpoint_round_trip_restores_state_and_random_streams(misa_script, tmp_path):
    ckpt, utils = misa_script.checkpoint, misa_script.utils
    utils.seed_everything(3)
    state = {
        "recipe": {"w": torch.randn(4, 3), "opt": {"step": torch.tensor(7.0)}},
        "step": 20,
        "scores": [(10, 1.5), (20, -2.0)],
        "run_id": "abc",
        "config": {"sizes": [16, 16], "tau": None, "name": "x", "flag": True},
        "rng": utils.rng_state(),
    }
    draws = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.save_checkpoint(tmp_path / "last.pt", state)
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    loaded = ckpt.load_checkpoint(tmp_path)  # a folder stands for its last.pt
    assert_same(loaded, state)
    utils.seed_everything(99)
    utils.set_rng_state(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(again[0], draws[0])
    np.testing.assert_array_equal(again[1], draws[1])
    assert again[2] == draws[2]


def _damaged(kind: str, good: bytes, path: Path) -> None:
    if kind == "a foreign torch file":
        torch.save({"model": torch.zeros(3)}, path)
        return
    data = {
        "empty": b"",
        "random bytes": np.random.default_rng(0).bytes(4096),
        "cut in half": good[: len(good) // 2],
        "cut in its header": good[:40],
        "a flipped byte": bytes(
            b ^ 0xFF if i == 3 * len(good) // 4 else b for i, b in enumerate(good)
        ),
        "bytes appended": good + bytes(10),
    }[kind]
    path.write_bytes(data)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("empty", "is empty"),
        ("random bytes", "is a file that is not a checkpoint"),
        ("a foreign torch file", "is a torch file that is not a checkpoint"),
        ("cut in half", "is truncated"),
        ("cut in its header", "is truncated"),
        ("a flipped byte", "is corrupted"),
        ("bytes appended", "is corrupted"),
    ],
)
def test_damaged_or_foreign_files_are_refused(misa_script, tmp_path, kind, expected):
    ckpt = misa_script.checkpoint
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"step": 5, "w": torch.arange(1000.0)})
    _damaged(kind, path.read_bytes(), path)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert f"{path} {expected}" in message
    assert f"mv {path} {path}.bad" in message and "resume=" in message


CODE_RAN = []


def _runs_on_load():
    CODE_RAN.append(True)


class _Executable:
    def __reduce__(self):
        return (_runs_on_load, ())


def test_checkpoint_content_is_loaded_without_running_code(misa_script, tmp_path):
    ckpt = misa_script.checkpoint
    ckpt.save_checkpoint(tmp_path / "last.pt", {"step": 1, "x": _Executable()})
    with pytest.raises(ckpt.CheckpointError, match="its content was refused"):
        ckpt.load_checkpoint(tmp_path / "last.pt")
    assert CODE_RAN == []


def test_docstring_examples(misa_script):
    for module in (misa_script.checkpoint, misa_script.utils):
        result = doctest.testmod(module)
        assert result.failed == 0
    assert doctest.testmod(misa_script.checkpoint).attempted > 0


# ---------------------------------------------------------- failed saves
def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_in_torch_save(monkeypatch):
    def save(obj, f, *args, **kwargs):
        f.write(b"x" * 100)  # part of the payload is on disk already
        raise _enospc()

    monkeypatch.setattr(torch, "save", save)


def _fail_while_writing(monkeypatch):
    # The disk fills while torch.save streams the payload: torch reports the
    # writer's OSError as a RuntimeError.
    real_save = torch.save

    class FillingDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written > 300:
                raise _enospc()
            self.written += memoryview(data).nbytes
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FillingDisk(f)))


def _fail_in_fsync(monkeypatch):
    def fsync(fd):
        raise _enospc()

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    "failure", [_fail_in_torch_save, _fail_while_writing, _fail_in_fsync]
)
def test_failed_save_keeps_the_previous_checkpoint(
    misa_script, tmp_path, monkeypatch, failure
):
    ckpt = misa_script.checkpoint
    path = tmp_path / "last.pt"
    previous = {"step": 10, "w": torch.arange(1000.0)}
    ckpt.save_checkpoint(path, previous)
    failure(monkeypatch)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.save_checkpoint(path, {"step": 20, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert "no space left on device" in str(err.value)
    assert "the previous checkpoint there is intact" in str(err.value)
    assert os.listdir(tmp_path) == ["last.pt"]  # the partial file is gone
    assert_same(ckpt.load_checkpoint(path), previous)


def test_full_disk_stops_the_run_at_its_last_checkpoint(
    misa_script, pendulum_file, tmp_path, monkeypatch
):
    ckpt = misa_script.checkpoint
    args = [BC, "optim.gradient_steps=6", "checkpoint.interval=2", "logger.eval_iter=6"]
    real_save = torch.save

    def save(obj, f, *rest, **kwargs):
        if isinstance(obj, dict) and obj.get("step", 0) >= 4:
            raise _enospc()
        return real_save(obj, f, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, tmp_path, pendulum_file, *args)
    monkeypatch.undo()
    path = tmp_path / "checkpoints" / "last.pt"
    message = str(err.value)
    assert message.startswith("Stopped at step 4.")
    assert "no space left on device" in message
    assert f"resume={path}" in message and "continue from step 2" in message
    assert ckpt.load_checkpoint(path)["step"] == 2
    # no temporary file left; the run's lock file stays (unlocked)
    assert sorted(os.listdir(path.parent)) == ["last.pt", "last.pt.lock"]
    assert not (tmp_path / "summary.json").exists()
    # Rerun once there is room: the run continues from step 2 to the end.
    train(misa_script, tmp_path, pendulum_file, *args, f"resume={path}")
    assert ckpt.load_checkpoint(path)["step"] == 6


# ---------------------------------------------------------- start checks
def test_unwritable_checkpoint_folder_stops_before_loading_data(misa_script, tmp_path):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    # The dataset does not exist: loading it first would fail differently.
    with pytest.raises(misa_script.checkpoint.CheckpointError) as err:
        train(
            misa_script,
            tmp_path,
            tmp_path / "missing.hdf5",
            f"checkpoint.dir={not_a_folder}/checkpoints",
        )
    assert f"{not_a_folder}/checkpoints is not writable" in str(err.value)
    assert "pass checkpoint.dir=<a writable folder>" in str(err.value)


def test_too_little_space_stops_before_the_first_step(
    misa_script, pendulum_file, tmp_path, monkeypatch
):
    ckpt = misa_script.checkpoint
    # The size of a real checkpoint of this configuration (after one update).
    train(misa_script, tmp_path / "sized", pendulum_file, "optim.gradient_steps=1")
    size = (tmp_path / "sized" / "checkpoints" / "last.pt").stat().st_size
    real_usage = shutil.disk_usage

    def with_free(free):
        usage = real_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=free))

    # A save needs room for the new checkpoint next to the previous one.
    with_free(size)
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, tmp_path / "full", pendulum_file, "optim.gradient_steps=1")
    assert "Not enough space for checkpoints" in str(err.value)
    assert "checkpoint.dir=<a folder with space>" in str(err.value)
    assert not (tmp_path / "full" / "checkpoints" / "last.pt").exists()
    with_free(2 * size)
    train(misa_script, tmp_path / "room", pendulum_file, "optim.gradient_steps=1")
    assert (tmp_path / "room" / "checkpoints" / "last.pt").exists()


# ------------------------------------------------------------- resuming
def _overrides_in(message: str) -> list[str]:
    """The overrides of the first command a refusal suggests."""
    return re.search(r"`\.\.\. ([^`]*)`", message)[1].split()


def test_incompatible_rerun_is_refused_and_the_checkpoint_kept(
    misa_script, pendulum_file, tmp_path
):
    ckpt = misa_script.checkpoint
    base = [BC, "optim.gradient_steps=4", "logger.eval_iter=4", "checkpoint.interval=4"]
    train(misa_script, tmp_path, pendulum_file, *base)
    path = tmp_path / "checkpoints" / "last.pt"
    saved = path.read_bytes()
    changed = ["env.seed=1", "network.critic_hidden_sizes=[32,32]"]
    with pytest.raises(ckpt.CheckpointError) as err:
        train(
            misa_script,
            tmp_path,
            pendulum_file,
            *base,
            *changed,
            "optim.gradient_steps=2",
        )
    message = str(err.value)
    assert "env.seed: checkpoint 0 vs now 1" in message
    assert "network.critic_hidden_sizes: checkpoint [16,16] vs now [32,32]" in message
    assert "optim.gradient_steps: checkpoint step 4 vs now 2" in message
    assert "hydra.run.dir=<new folder>" in message
    assert path.read_bytes() == saved
    # The suggested overrides make the run continue the checkpoint.
    overrides = _overrides_in(message)
    assert sorted(overrides) == sorted(
        ["env.seed=0", "network.critic_hidden_sizes=[16,16]", "optim.gradient_steps=4"]
    )
    train(misa_script, tmp_path, pendulum_file, *base, *changed, *overrides)
    # A damaged checkpoint in the run's folder is refused, never overwritten.
    path.write_bytes(saved[:100])
    with pytest.raises(ckpt.CheckpointError, match="is truncated"):
        train(misa_script, tmp_path, pendulum_file, *base)
    assert path.read_bytes() == saved[:100]


def test_training_time_adds_up_over_resumed_processes(
    misa_script, pendulum_file, tmp_path
):
    import time

    base = [BC, "logger.eval_iter=2", "checkpoint.interval=2"]
    start = time.perf_counter()
    first = train(misa_script, tmp_path, pendulum_file, *base, "optim.gradient_steps=8")
    first_wall = time.perf_counter() - start
    start = time.perf_counter()  # two more steps and one evaluation, four fewer
    second = train(
        misa_script, tmp_path, pendulum_file, *base, "optim.gradient_steps=10"
    )
    second_wall = time.perf_counter() - start
    assert 0 < first["train_s"] <= first_wall
    # the resumed run counts the first process's time, and only its own on top
    assert first["train_s"] < second["train_s"] <= first["train_s"] + second_wall


def test_resume_next_to_the_run_folders_own_checkpoint(
    misa_script, pendulum_file, tmp_path, caplog
):
    ckpt = misa_script.checkpoint
    base = [BC, "logger.eval_iter=2", "checkpoint.interval=2"]
    run, own = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt"
    train(misa_script, run, pendulum_file, *base, "optim.gradient_steps=2")
    backup = tmp_path / "backup.pt"
    shutil.copy(own, backup)
    train(misa_script, run, pendulum_file, *base, "optim.gradient_steps=4")
    # A requeued job with resume=<the step-2 copy> finds its own later checkpoint.
    caplog.set_level("INFO")
    args = [*base, "optim.gradient_steps=4", f"resume={backup}"]
    train(misa_script, run, pendulum_file, *args)
    assert f"Resuming from {own} (step 4)" in caplog.text
    # A checkpoint of another run next to the folder's own is refused.
    other = tmp_path / "other"
    train(misa_script, other, pendulum_file, *base, "optim.gradient_steps=2")
    resume = other / "checkpoints" / "last.pt"
    with pytest.raises(ckpt.CheckpointError) as err:
        train(misa_script, run, pendulum_file, *base, f"resume={resume}")
    assert "a checkpoint of another run" in str(err.value)
    assert "drop resume=" in str(err.value)
    assert f"resume={resume} checkpoint.dir=<new folder>" in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("env.seed=1", "env.seed: checkpoint 0 vs now 1"),
        ("num_agents=2", "num_agents: checkpoint 1 vs now 2"),
        ("+algorithm=cql", "algorithm: checkpoint <absent> vs now cql"),
        (
            "replay_buffer.dataset=other.hdf5",
            "replay_buffer.dataset: checkpoint {dataset} vs now other",
        ),
        ("replay_buffer.reward_processing=minmax", "checkpoint none vs now minmax"),
        ("network.actor_hidden_sizes=[8]", "checkpoint [16,16] vs now [8]"),
        ("network.critic_activation=relu", "checkpoint elu vs now relu"),
        ("network.trainable_log_std=false", "checkpoint true vs now false"),
        ("network.init=torch", "network.init: checkpoint authors vs now torch"),
        ("loss.num_qvalue_nets=3", "loss.num_qvalue_nets: checkpoint 2 vs now 3"),
        ("loss.mi_critic=true", "loss.mi_critic: checkpoint false vs now true"),
        ("loss.lagrange_tau=3.0", "loss.lagrange_tau: checkpoint null vs now 3.0"),
        ("optim.gradient_steps=5", "checkpoint step 10 vs now 5"),
        # Every other setting that changes the run is checked too.
        ("optim.actor_lr=0.001", "optim.actor_lr: checkpoint 0.0001 vs now 0.001"),
        ("loss.min_q_weight=1.0", "loss.min_q_weight: checkpoint 5.0 vs now 1.0"),
        ("loss.mi_estimator=ba", "loss.mi_estimator: checkpoint misa vs now ba"),
        ("loss.bc_term=false", "loss.bc_term: checkpoint true vs now false"),
        ("loss.fixed_alpha=true", "loss.fixed_alpha: checkpoint false vs now true"),
        (
            "replay_buffer.clip_actions=0.5",
            "replay_buffer.clip_actions: checkpoint 0.999 vs now 0.5",
        ),
        ("replay_buffer.batch_size=32", "batch_size: checkpoint 16 vs now 32"),
        ("+extra.option=1", "extra.option: checkpoint <absent> vs now 1"),
        # Settings a resumed run may change.
        ("optim.gradient_steps=10", None),
        ("logger.eval_iter=7", None),
        ("logger.backend=csv", None),
        ("logger.exp_name=other", None),
        ("checkpoint.interval=3", None),
        ("checkpoint.dir=/elsewhere", None),
        ("optim.device=cpu", None),
        ("compile.compile=true", None),
        ("loss.compile_sampler=true", None),
        ("replay_buffer.root=/elsewhere", None),
        ("resume=/some/last.pt", None),
    ],
)
def test_config_differences(misa_script, pendulum_file, override, expected):
    from omegaconf import OmegaConf

    def resolved(*overrides):
        return OmegaConf.to_container(make_cfg(pendulum_file, *overrides), resolve=True)

    found = misa_script.checkpoint.config_differences(
        resolved(), resolved(override), step=10
    )
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1
        assert expected.format(dataset=pendulum_file) in found[0][0]


# Another valid value of every MISALoss option of config.yaml.
ALTERNATIVES = {
    "gamma": 0.9,
    "tau": 0.01,
    "num_qvalue_nets": 3,
    "min_q_weight": 1.0,
    "bc_weight": 0.1,
    "unbiased_weight": 0.2,
    "mi_estimator": "dv",
    "bc_term": False,
    "unbiased_correction": False,
    "mi_critic": True,
    "num_mcmc_samples": 3,
    "num_policy_samples": 2,
    "num_burnin": 1,
    "num_leapfrog": 1,
    "step_size": 0.5,
    "num_adaptation_steps": 2,
    "target_accept": 0.6,
    "sampler_mode": "pretanh",
    "num_chains": 2,
    "compile_sampler": True,
    "lagrange_tau": 3.0,
    "alpha_init": 0.5,
    "fixed_alpha": True,
    "target_entropy": -2.0,
    "backup_entropy": True,
    "deactivate_vmap": True,
}


def test_loss_options_that_change_the_state_are_checked_on_resume(
    misa_script, pendulum_file
):
    from omegaconf import OmegaConf

    utils, ckpt = misa_script.utils, misa_script.checkpoint
    base_cfg = make_cfg(pendulum_file)
    assert set(ALTERNATIVES) == set(base_cfg.loss), "classify the new loss options"
    data = utils.make_offline_data(base_cfg, torch.device("cpu"))

    def layout(cfg):
        recipe = utils.make_misa_update(cfg, data, 1, torch.device("cpu"))
        state = recipe.loss_module.state_dict()
        return {k: tuple(v.shape) for k, v in state.items()}, sorted(recipe.optimizers)

    base = layout(base_cfg)
    saved = OmegaConf.to_container(base_cfg, resolve=True)
    changing = []
    for option, value in ALTERNATIVES.items():
        cfg = make_cfg(pendulum_file, f"loss.{option}={value}")
        if layout(cfg) != base:
            changing.append(option)
            now = OmegaConf.to_container(cfg, resolve=True)
            found = ckpt.config_differences(saved, now, step=0)
            # One difference, whose override gives back the checkpoint's value.
            assert len(found) == 1
            key, value = found[0][1].split("=", 1)
            assert key == f"loss.{option}"
            assert yaml.safe_load(value) == saved["loss"][option]
    # The brute force found the options that add parameters.
    assert {"num_qvalue_nets", "mi_critic", "lagrange_tau"} <= set(changing)


# ------------------------------------------------------------ evaluation
def untrained_policy(misa_script, pendulum_file, *overrides):
    """The script's config, data and a seeded, untrained actor on the tiny settings."""
    utils = misa_script.utils
    cfg = make_cfg(pendulum_file, *overrides)
    data = utils.make_offline_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    policy = utils.make_actor(cfg, 1)
    utils.initialize_lazy([policy], data.replay_buffer)
    return cfg, data, policy


def test_evaluation_depends_on_its_seed_only(misa_script, pendulum_file):
    utils = misa_script.utils
    cfg, data, policy = untrained_policy(
        misa_script, pendulum_file, "logger.eval_steps=30"
    )
    cpu = torch.device("cpu")
    fresh = utils.make_environment(cfg, data, cpu)
    expected = utils.evaluate(fresh, policy, 30, seed=5)
    used = utils.make_environment(cfg, data, cpu)
    other = utils.evaluate(used, policy, 30, seed=6)  # an earlier evaluation
    np.testing.assert_array_equal(utils.evaluate(used, policy, 30, seed=5), expected)
    assert not np.array_equal(other, expected)  # the seed does matter
    fresh.close()
    used.close()


@pytest.mark.parametrize("copies", [1, 2])
def test_evaluation_stops_when_every_episode_has_ended(
    misa_script, pendulum_file, copies
):
    """Pendulum's episodes end at 200 steps: an evaluation capped at 250 steps
    takes 200 and returns each copy's first-episode return, as summed here
    over a rollout that runs the full 250 steps."""
    utils = misa_script.utils
    cfg, data, policy = untrained_policy(
        misa_script, pendulum_file, f"logger.eval_envs={copies}"
    )
    calls = []

    def counted(td):
        calls.append(None)
        return policy(td)

    env = utils.make_environment(cfg, data, torch.device("cpu"))
    returns = utils.evaluate(env, counted, 250, seed=3)
    assert len(calls) == 200
    env.set_seed(3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        full = env.rollout(250, policy, break_when_any_done=False)
    env.close()
    full = full.reshape(copies, 250)
    expected = []
    for copy in full.unbind(0):
        total = 0.0
        for step in copy.unbind(0):
            total += step["next", "reward"].item()
            if step["next", "done"].item():
                break
        expected.append(total)
    np.testing.assert_allclose(returns, expected, rtol=1e-5)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "replay_buffer.batch_size=0",
            "replay_buffer.batch_size=0: must be a positive integer",
        ),
        (
            "replay_buffer.batch_size=-4",
            "replay_buffer.batch_size=-4: must be a positive integer",
        ),
        ("optim.gradient_steps=0", "optim.gradient_steps=0: must be a positive"),
        ("checkpoint.interval=0", "checkpoint.interval=0: must be a positive"),
        ("logger.eval_iter=-1", "logger.eval_iter=-1: must be a positive integer"),
        ("logger.eval_iter=2.5", "logger.eval_iter=2.5: must be a positive integer"),
        ("logger.log_interval=0", "logger.log_interval=0: must be a positive"),
        ("logger.eval_envs=0", "logger.eval_envs=0: must be a positive integer"),
        ("loss.alpha_init=0", "loss.alpha_init=0: the temperature must start above 0"),
        ("loss.alpha_init=-1.0", "loss.alpha_init=-1.0: the temperature must start"),
        ("loss.target_entropy=null", "loss.target_entropy=null: pass loss.target_"),
        ("loss.target_entropy=high", "loss.target_entropy=high: pass"),
        ("num_agents=0", "num_agents=0: must be a positive integer"),
    ],
)
def test_invalid_settings_are_named(misa_script, override, expected):
    cfg = make_cfg("unused.hdf5", override)
    with pytest.raises(misa_script.utils.ConfigError) as err:
        misa_script.utils.validate_config(cfg)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (SCRIPT_DIR / "preset").glob("*.yaml"))
)
def test_presets_are_valid(misa_script, preset):
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.2"):
        cfg = compose("config", overrides=[f"preset={preset}"])
    misa_script.utils.validate_config(cfg)


# ------------------------------------------------------------ CUDA graphs
def test_captured_update_has_one_graph_per_set_of_groups(
    misa_script, pendulum_file, monkeypatch
):
    """compile.cudagraphs=true: each distinct tuple of stepping groups gets its
    own captured update, called with that tuple; the optimisers become
    capturable, with a restored step counter on the parameters' device."""
    import tensordict.nn

    graphs = []

    class PassThrough:  # CudaGraphModule without CUDA (and its global pytree change)
        def __init__(self, module, warmup):
            graphs.append(self)
            self.module = module

        def __call__(self, batch):
            return self.module(batch)

    monkeypatch.setattr(tensordict.nn, "CudaGraphModule", PassThrough)
    utils = misa_script.utils
    cfg = make_cfg(pendulum_file)
    cpu = torch.device("cpu")
    data = utils.make_offline_data(cfg, cpu)
    recipe = utils.make_misa_update(cfg, data, 1, cpu)
    _, critic_optim = recipe.optimizers["critic"]
    first = critic_optim.param_groups[0]["params"][0]
    critic_optim.state[first]["step"] = torch.tensor(7.0)  # as a checkpoint restores
    calls = []

    def update(batch, active):
        calls.append((batch["x"].item(), active))
        return batch

    captured = utils.capture_update(recipe, update)
    plan = [("actor", "critic"), ("critic",), ("actor", "critic"), ("critic",)]
    for i, active in enumerate(plan):
        captured(TensorDict({"x": torch.tensor(float(i))}), active)
    assert calls == [(float(i), active) for i, active in enumerate(plan)]
    assert len(graphs) == 2
    for _, optimizer in recipe.optimizers.values():
        assert all(group["capturable"] for group in optimizer.param_groups)
    assert critic_optim.state[first]["step"].device == first.device


def test_deterministic_actor_compiles(misa_script, pendulum_file):
    # TD3+BC's TanhDelta actor inside torch.compile: the same actions as eager,
    # tanh(net(obs)) written out here
    torch.manual_seed(0)
    cfg = make_cfg(pendulum_file, "compile.compile=true")
    actor = misa_script.utils.make_actor(cfg, 2, deterministic=True)
    td = TensorDict(observation=torch.randn(5, 3), batch_size=[5])
    compiled = torch.compile(actor, fullgraph=False)
    expected = torch.tanh(actor.module[0](td["observation"]))
    torch.testing.assert_close(compiled(td.clone())["action"], expected)
