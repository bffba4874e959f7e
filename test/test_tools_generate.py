"""The dataset tool (tools/generate_dataset.py): D4RL recipes, metadata, loading back, resuming."""

from __future__ import annotations

import importlib
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchrl_misa.data import (
    load_offline_data,
    dataset_average_normalized_score,
    dataset_env_id,
    make_env,
    normalized_score,
    read_metadata,
)

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))  # the tool's modules import each other by name
tool = importlib.import_module("generate_dataset")
agent_module = importlib.import_module("behaviour_agent")
generate, GenerateConfig = tool.generate, tool.GenerateConfig
parse_args, RECIPES = tool.parse_args, tool.RECIPES
SACAgent, SACConfig = agent_module.SACAgent, agent_module.SACConfig

EPISODE = 50


def tiny_config(out, **kw):
    # MountainCarContinuous: an untrained deterministic policy (small actions)
    # already beats uniform random actions (action cost), so the expert > random
    # check holds at any budget; episodes cut at 50 steps
    cfg = {
        "env_id": "MountainCarContinuous-v0",
        "out": str(out),
        "max_episode_steps": EPISODE,
        "train_steps": 400,
        "init_random_steps": 200,
        "frames_per_batch": 50,
        "eval_every": 100,
        "eval_episodes": 1,
        "final_eval_episodes": 2,
        "dataset_steps": 120,
        "checkpoint_every": 100,
        "progress": False,
        "sac": SACConfig(hidden=16, batch_size=16),
    }
    cfg.update(kw)
    return GenerateConfig(**cfg)


def h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def brute_force_returns(arrays):
    returns, acc = [], 0.0
    for r, term, out in zip(arrays["rewards"], arrays["terminals"], arrays["timeouts"]):
        acc += float(r)
        if term or out:
            returns.append(acc)
            acc = 0.0
    return returns


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    cfg = tiny_config(out, recipes=RECIPES)
    paths = generate(cfg, log=lambda *a: None)
    return cfg, paths


def test_recipes_files_and_metadata(generated):
    cfg, paths = generated
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert set(paths) == set(RECIPES)
    for recipe, path in paths.items():
        meta = read_metadata(path)
        arrays = h5(path)
        assert meta["recipe"] == recipe and meta["env_id"] == cfg.env_id
        assert meta["seed"] == cfg.seed
        assert meta["random_return"] == pytest.approx(summary["random_return"])
        assert meta["expert_return"] == pytest.approx(summary["expert_return"])
        assert meta["expert_return"] > meta["random_return"]
        assert meta["reference_returns"] == "measured"
        assert meta["measured_expert_return"] == meta["expert_return"]
        assert "stop_at_return" not in meta
        returns = brute_force_returns(arrays)
        assert meta["dataset_episodes"] == len(returns)
        assert meta["dataset_return_mean"] == pytest.approx(np.mean(returns), rel=1e-5)
        # whole episodes of at most EPISODE steps; a time limit only at exactly EPISODE steps
        ends = arrays["terminals"] | arrays["timeouts"]
        assert ends[-1] and not (arrays["terminals"] & arrays["timeouts"]).any()
        starts = np.r_[0, np.flatnonzero(ends)[:-1] + 1]
        lengths = np.flatnonzero(ends) + 1 - starts
        assert lengths.max() <= EPISODE
        np.testing.assert_array_equal(lengths[arrays["timeouts"][ends]], EPISODE)
        # inside episodes next_observations[t] == observations[t + 1]
        inside = ~ends[:-1]
        np.testing.assert_array_equal(
            arrays["next_observations"][:-1][inside], arrays["observations"][1:][inside]
        )
        assert np.abs(arrays["actions"]).max() <= 1.0
        if recipe in ("random", "medium", "expert"):
            assert len(arrays["rewards"]) >= cfg.dataset_steps
        if recipe != "random":
            assert meta["policy_checkpoint"]
        assert dataset_env_id(path) == cfg.env_id
        avg = dataset_average_normalized_score(path)
        lo, hi = meta["random_return"], meta["expert_return"]
        assert avg == pytest.approx(
            np.mean([100 * (g - lo) / (hi - lo) for g in returns])
        )


def test_medium_policy_choice(generated):
    cfg, paths = generated
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    lo, hi = summary["random_return"], summary["expert_return"]
    threshold = lo + (hi - lo) / 3
    assert summary["medium_threshold"] == pytest.approx(threshold)
    evals = summary["evals"]
    first = next(s for s, r in evals if r >= threshold)
    assert summary["medium_step"] == first
    assert all(r < threshold for s, r in evals if s < first)


def test_medium_replay_is_the_training_buffer_prefix(generated):
    cfg, paths = generated
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    arrays = h5(paths["medium-replay"])
    buf = TensorDict.load_memmap(cfg.run_dir / "training_buffer")
    n = len(arrays["rewards"])
    # ends at the first episode end at or after the medium step
    done = buf["next", "done"].reshape(-1).numpy()
    expected_n = (
        summary["medium_step"]
        - 1
        + np.flatnonzero(done[summary["medium_step"] - 1 :])[0]
        + 1
    )
    assert n == expected_n
    np.testing.assert_array_equal(
        arrays["observations"], buf["observation"][:n].numpy()
    )
    np.testing.assert_array_equal(arrays["actions"], buf["action"][:n].numpy())
    np.testing.assert_array_equal(
        arrays["rewards"], buf["next", "reward"][:n, 0].numpy()
    )


def test_medium_expert_is_medium_then_expert(generated):
    cfg, paths = generated
    me, m, e = (h5(paths[r]) for r in ("medium-expert", "medium", "expert"))
    for key in (
        "observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "next_observations",
    ):
        np.testing.assert_array_equal(me[key], np.concatenate([m[key], e[key]]))


def test_generated_file_through_the_entry_point(
    generated, tmp_path, storage_matches_file
):
    cfg, paths = generated
    path = paths["medium-replay"]
    arrays = h5(path)
    rb = load_offline_data(
        f"d4rl_file:{path}", 32, root=tmp_path, clip_actions=None
    ).replay_buffer
    storage_matches_file(rb, arrays)
    meta = read_metadata(path)
    ret = 0.5 * (meta["random_return"] + meta["expert_return"])
    assert normalized_score(rb, ret) == pytest.approx(50.0)


def test_existing_files_are_kept(generated):
    cfg, paths = generated
    before = paths["random"].stat().st_mtime_ns
    logs = []
    generate(cfg, log=logs.append)
    assert paths["random"].stat().st_mtime_ns == before
    assert any("training already done" in line for line in logs)


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    # batches of 40 steps, episodes of 50: the resume point (an episode end) is
    # not a multiple of the batch size, and the budget must still not be exceeded
    cfg = tiny_config(
        tmp_path, recipes=("medium-replay",), frames_per_batch=40, checkpoint_every=70
    )
    calls = {"n": 0}
    original = SACAgent.update

    def crash_after_100(self, batch):
        calls["n"] += 1
        if calls["n"] > 90:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(SACAgent, "update", crash_after_100)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, log=lambda *a: None)
    state = cfg.run_dir / "last.pt"
    assert state.exists() and not (cfg.run_dir / "summary.json").exists()
    monkeypatch.setattr(SACAgent, "update", original)
    logs = []
    paths = generate(cfg, log=logs.append)
    resumed = [line for line in logs if line.startswith("resuming")]
    assert resumed and int(resumed[0].split()[-1]) % 40 != 0, resumed
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    steps = [s for s, _ in summary["evals"]]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.train_steps
    buf = TensorDict.load_memmap(cfg.run_dir / "training_buffer")
    assert buf.shape[0] == cfg.train_steps
    assert paths["medium-replay"].exists()


def test_command_line():
    cfg = parse_args(
        "--env Hopper-v5 --recipes medium-replay expert --train-steps 1000 "
        "--init-random-steps 100 --out x --hidden 64".split()
    )
    assert cfg.env_id == "Hopper-v5" and cfg.recipes == ("medium-replay", "expert")
    assert cfg.train_steps == 1000 and cfg.sac.hidden == 64
    assert cfg.init_random_steps == 100
    assert str(cfg.dataset_path("medium-replay")) == "x/hopper-medium-replay-v0.hdf5"


BAD_FLAGS = [
    ("--train-steps", "0"),
    ("--train-steps", "-100"),
    ("--frames-per-batch", "0"),
    ("--eval-every", "-1"),
    ("--checkpoint-every", "0"),
    ("--eval-episodes", "0"),
    ("--final-eval-episodes", "-2"),
    ("--random-episodes", "0"),
    ("--dataset-steps", "0"),
    ("--threads", "0"),
    ("--seed", "-1"),
    ("--init-random-steps", "-5"),
    ("--max-episode-steps", "0"),
    ("--utd", "0"),
    ("--utd", "nan"),
    ("--medium-fraction", "0"),
    ("--medium-fraction", "1.5"),
    ("--hidden", "0"),
    ("--batch-size", "-8"),
    ("--lr", "0"),
    ("--lr", "inf"),
]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_command_line_refuses_nonsense(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([flag, value, "--out", "x"])
    assert exit_info.value.code == 2  # argparse's status for a usage error
    err = capsys.readouterr().err
    assert err.startswith("usage: python tools/generate_dataset.py")
    assert f"error: {flag} " in err and value in err


@pytest.mark.parametrize(
    "flags,named",
    [
        ("--train-steps 1000 --init-random-steps 1000", "--init-random-steps"),
        ("--train-steps 1000 --init-random-steps 10 --eval-every 2000", "--eval-every"),
        (
            "--train-steps 1000 --init-random-steps 10 --frames-per-batch 5000",
            "--frames-per-batch",
        ),
    ],
)
def test_command_line_refuses_inconsistent_budgets(flags, named, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags.split())
    assert f"error: {named} must" in capsys.readouterr().err


def test_generate_refuses_bad_settings_before_running(tmp_path, monkeypatch):
    def no_env(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(tool, "make_env", no_env)
    with pytest.raises(ValueError, match="--eval-every must be a positive integer"):
        generate(tiny_config(tmp_path, eval_every=0), log=lambda *a: None)
    with pytest.raises(ValueError, match="--dataset-steps must be a positive integer"):
        generate(tiny_config(tmp_path, dataset_steps=-3), log=lambda *a: None)
    with pytest.raises(ValueError, match="Unknown recipe 'replay'"):
        generate(tiny_config(tmp_path, recipes=("replay",)), log=lambda *a: None)
    assert not any(tmp_path.iterdir())  # nothing was written either


def test_describe_command_line(generated):
    """`python -m torchrl_misa.data.describe FILE` prints the file's own figures, warning-free."""
    import subprocess
    import sys

    _, paths = generated
    path = paths["medium-replay"]
    arrays = h5(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "-m",
            "torchrl_misa.data.describe",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    n, episodes = len(arrays["rewards"]), len(brute_force_returns(arrays))
    assert f"| transitions / episodes | {n} / {episodes} (" in proc.stdout


# -- --stop-at-return: D4RL's medium-replay (the buffer of a run stopped at medium)
REFS = (-1200.0, -150.0)  # given reference returns, unlike anything measured here
# Pendulum's rewards are <= 0, so a return of 1 is never reached
UNREACHABLE = 1.0


def stop_config(out, **kw):
    # Pendulum never terminates: every episode lasts EPISODE steps, so episode ends
    # are known in advance; evaluations every 80 steps fall inside episodes, and
    # gradient steps begin after the first one (seed 2: returns improve at 160 and
    # 240, after gradient steps began)
    cfg = {
        "env_id": "Pendulum-v1",
        "seed": 2,
        "train_steps": 480,
        "init_random_steps": 80,
        "frames_per_batch": 40,
        "eval_every": 80,
        "random_episodes": 10,
        "recipes": ("medium", "medium-replay"),
        "reference_returns": REFS,
    }
    cfg.update(kw)
    return tiny_config(out, **cfg)


def end_of_episode(step):
    """Rows up to the end of the EPISODE-step episode in progress at ``step``."""
    return -(-step // EPISODE) * EPISODE


@pytest.fixture(scope="module")
def unreached(tmp_path_factory):
    """A run whose --stop-at-return is never reached: its error and its checkpoint."""
    cfg = stop_config(tmp_path_factory.mktemp("unreached"), stop_at_return=UNREACHABLE)
    with pytest.raises(SystemExit) as exit_info:
        generate(cfg, log=lambda *a: None)
    state = agent_module.load_checkpoint(cfg.run_dir / "last.pt")
    return cfg, str(exit_info.value.code), state


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, unreached):
    """A fresh run stopped at an evaluation seen in the unreached run's history."""
    _, _, state = unreached
    history = state["evals"]
    # the last intermediate evaluation that beats all earlier ones, after gradient
    # steps began and inside an episode (so that its episode has to be finished)
    candidates = [
        k
        for k in range(1, len(history) - 1)
        if history[k][1] > max(r for _, r in history[:k])
        and history[k][0] > stop_config("x").init_random_steps
        and history[k][0] % EPISODE
    ]
    assert candidates, f"no usable evaluation in {history}"
    k = candidates[-1]
    step, ret = history[k]
    threshold = 0.5 * (ret + max(r for _, r in history[:k]))
    cfg = stop_config(tmp_path_factory.mktemp("stopped"), stop_at_return=threshold)
    paths = generate(cfg, log=lambda *a: None)
    return cfg, paths, history[: k + 1], threshold


def test_stop_at_return_stops_at_that_evaluation(stopped, unreached):
    cfg, paths, history, threshold = stopped
    step = history[-1][0]
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    # the same training as the unreached run up to that evaluation, and no further
    assert [s for s, _ in summary["evals"]] == [s for s, _ in history]
    np.testing.assert_allclose(
        [r for _, r in summary["evals"]], [r for _, r in history]
    )
    assert summary["medium_step"] == summary["train_steps"] == step
    assert summary["expert_checkpoint"] is None
    assert not (cfg.run_dir / "last.pt").exists()

    replay = h5(paths["medium-replay"])
    rows = end_of_episode(step)
    assert rows > step  # the episode in progress was finished
    assert len(replay["rewards"]) == rows
    assert replay["timeouts"].sum() == rows // EPISODE and replay["timeouts"][-1]
    unreached_buffer = unreached[2]["buffer"]
    np.testing.assert_array_equal(
        replay["observations"][:step], unreached_buffer["observation"][:step].numpy()
    )

    medium_policy = agent_module.load_checkpoint(summary["medium_checkpoint"])
    assert medium_policy["step"] == step
    assert medium_policy["eval_return"] == pytest.approx(history[-1][1])
    for recipe, path in paths.items():
        meta = read_metadata(path)
        assert (meta["random_return"], meta["expert_return"]) == REFS
        assert meta["reference_returns"] == "given"
        assert meta["stop_at_return"] == pytest.approx(threshold)
        assert meta["medium_step"] == meta["train_steps"] == step
        assert meta["policy_checkpoint"] == summary["medium_checkpoint"]
        assert meta["measured_random_return"] == pytest.approx(summary["random_return"])
        assert "measured_expert_return" not in meta
        returns = brute_force_returns(h5(path))
        assert dataset_average_normalized_score(path) == pytest.approx(
            np.mean([100 * (g - REFS[0]) / (REFS[1] - REFS[0]) for g in returns])
        )
    medium = h5(paths["medium"])
    assert len(medium["rewards"]) == end_of_episode(cfg.dataset_steps)


def test_stop_at_return_never_reached(unreached, tmp_path):
    cfg, message, state = unreached
    assert not (cfg.run_dir / "summary.json").exists()
    best_step, best = max(state["evals"], key=lambda e: e[1])
    assert f"best return was {best:.1f} (step {best_step})" in message
    assert "larger --train-steps" in message and "lower --stop-at-return" in message
    # the checkpoint is at the cap, so that a larger cap continues from there
    assert state["step"] == cfg.train_steps == state["evals"][-1][0]
    shutil.copytree(cfg.out, tmp_path, dirs_exist_ok=True)
    kept = cfg.train_steps // EPISODE * EPISODE  # rows up to the last episode end
    smaller = dataclasses.replace(cfg, out=str(tmp_path), train_steps=kept - 50)
    with pytest.raises(SystemExit, match=f"pass --train-steps {kept} or more"):
        generate(smaller, log=lambda *a: None)
    larger = dataclasses.replace(
        cfg, out=str(tmp_path), train_steps=cfg.train_steps + 80
    )
    logs = []
    with pytest.raises(SystemExit, match="--train-steps 560"):
        generate(larger, log=logs.append)
    # the episode in progress at the cap is recollected, as any resume does
    assert f"resuming {larger.run_dir} at step {kept}" in logs
    resumed = agent_module.load_checkpoint(larger.run_dir / "last.pt")
    assert resumed["step"] == larger.train_steps


def test_stop_at_return_resumes_at_the_same_stop(stopped, tmp_path, monkeypatch):
    uninterrupted_cfg, paths, history, threshold = stopped
    step = history[-1][0]
    cfg = dataclasses.replace(uninterrupted_cfg, out=str(tmp_path))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # killed while finishing the episode in progress at the stop
    monkeypatch.setattr(tool, "_finish_episode", killed)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, log=lambda *a: None)
    assert agent_module.load_checkpoint(cfg.run_dir / "last.pt")["step"] == step
    monkeypatch.undo()

    # then killed while measuring R_random, once the episode was finished
    original = tool.episode_returns

    def killed_on_random(env, policy, *args, **kwargs):
        if policy is None:
            raise KeyboardInterrupt
        raise AssertionError("a resumed run evaluated its policy again")

    monkeypatch.setattr(tool, "episode_returns", killed_on_random)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, log=logs.append)
    episode_start = step // EPISODE * EPISODE  # the unfinished episode is recollected
    assert f"resuming {cfg.run_dir} at step {episode_start}" in logs
    monkeypatch.setattr(tool, "episode_returns", original)

    logs = []
    resumed_paths = generate(cfg, log=logs.append)
    assert f"resuming {cfg.run_dir} at step {end_of_episode(step)}" in logs
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["medium_step"] == summary["train_steps"] == step
    assert [s for s, _ in summary["evals"]] == [s for s, _ in history]
    full, resumed = h5(paths["medium-replay"]), h5(resumed_paths["medium-replay"])
    assert len(resumed["rewards"]) == len(full["rewards"]) == end_of_episode(step)
    np.testing.assert_array_equal(
        resumed["observations"][:episode_start], full["observations"][:episode_start]
    )
    ours = agent_module.load_checkpoint(summary["medium_checkpoint"])["actor"]
    theirs = agent_module.load_checkpoint(
        json.loads((uninterrupted_cfg.run_dir / "summary.json").read_text())[
            "medium_checkpoint"
        ]
    )["actor"]
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value)


def test_lower_stop_at_return_stops_in_the_saved_history(stopped, unreached, tmp_path):
    # a rerun of the unreached run with a threshold its history already reached
    # trains no more: it stops at that evaluation, with the buffer already there
    cfg, _, state = unreached
    _, _, history, threshold = stopped
    step = history[-1][0]
    shutil.copytree(cfg.out, tmp_path, dirs_exist_ok=True)
    lower = dataclasses.replace(
        cfg, out=str(tmp_path), stop_at_return=threshold, recipes=("medium-replay",)
    )
    logs = []
    paths = generate(lower, log=logs.append)
    assert f"resuming {lower.run_dir} at step {end_of_episode(step)}" in logs
    summary = json.loads((lower.run_dir / "summary.json").read_text())
    assert summary["medium_step"] == summary["train_steps"] == step
    assert [s for s, _ in summary["evals"]] == [s for s, _ in history]
    replay = h5(paths["medium-replay"])
    rows = end_of_episode(step)
    np.testing.assert_array_equal(
        replay["observations"], state["buffer"]["observation"][:rows].numpy()
    )


def test_command_line_stop_at_return():
    cfg = parse_args(
        "--env Hopper-v5 --recipes medium medium-replay --stop-at-return 1000 "
        "--reference-returns -20.272305 3234.3 --train-steps 300000 "
        "--out datasets/extra".split()
    )
    assert cfg.stop_at_return == 1000.0
    assert cfg.reference_returns == (-20.272305, 3234.3)
    assert parse_args([]).stop_at_return is None
    assert parse_args([]).reference_returns is None


STOP = "--stop-at-return -200 --reference-returns -1200 -150"


@pytest.mark.parametrize(
    "flags,message",
    [
        (f"{STOP} --recipes expert", "--recipes expert need the policy of a full"),
        (
            f"{STOP} --recipes medium-replay medium-expert",
            "--recipes medium-expert need the policy of a full",
        ),
        (
            "--stop-at-return -200 --recipes medium-replay",
            "--stop-at-return needs --reference-returns RANDOM EXPERT",
        ),
        ("--reference-returns 10 5", "--reference-returns must have EXPERT > RANDOM"),
        ("--reference-returns 0 inf", "--reference-returns must be two finite"),
        (f"{STOP} --stop-at-return nan", "--stop-at-return must be a finite number"),
    ],
)
def test_command_line_refuses_stop_at_return_misuse(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(flags.split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err
    if "needs --reference-returns" in message:
        assert "Hopper -20.272305 3234.3" in err


def test_generate_refuses_stop_at_return_with_expert(tmp_path, monkeypatch):
    def no_env(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(tool, "make_env", no_env)
    cfg = stop_config(tmp_path, stop_at_return=-200.0, recipes=("expert",))
    with pytest.raises(ValueError, match="--recipes expert need the policy"):
        generate(cfg, log=lambda *a: None)
    assert not any(tmp_path.iterdir())


# -- shared with the training recipe -------------------------------------------
def test_actor_is_the_recipe_actor(misa_script):
    from omegaconf import OmegaConf

    env = make_env("Pendulum-v1")
    ours = agent_module.make_actor(env, hidden=24)
    cfg = OmegaConf.create(
        {"network": {"actor_hidden_sizes": [24, 24], "actor_activation": "relu"}}
    )
    recipe = misa_script.utils.make_actor(cfg, action_dim=1)
    td = env.fake_tensordict()
    recipe(td.clone())  # lazy layers get their sizes
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in recipe.state_dict().items()
    }
    recipe.load_state_dict(ours.state_dict())
    obs = torch.randn(5, 3)
    with torch.no_grad():
        a = ours(TensorDict(observation=obs, batch_size=[5]))["loc"]
        b = recipe(TensorDict(observation=obs, batch_size=[5]))["loc"]
    torch.testing.assert_close(a, b)


def test_episode_returns_match_gymnasium():
    # a zero-torque Pendulum episode summed step by step with gymnasium itself;
    # episode i is seeded with SeedSequence([seed, i]) (the recipe's evaluation seeds)
    import gymnasium
    from tensordict.nn import TensorDictModule

    zero = TensorDictModule(
        lambda obs: torch.zeros(*obs.shape[:-1], 1),
        in_keys=["observation"],
        out_keys=["action"],
    )
    got = agent_module.episode_returns(make_env("Pendulum-v1"), zero, 3, 200, seed=7)
    expected = []
    for i in range(3):
        seed = int(np.random.SeedSequence([7, i]).generate_state(1)[0])
        env = gymnasium.make("Pendulum-v1")
        env.reset(seed=seed)  # TorchRL's set_seed, then the rollout's own reset
        env.reset()
        total = 0.0
        for _ in range(200):
            total += env.step(np.zeros(1, np.float32))[1]
        expected.append(total)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_policies_in_the_recipe_checkpoint_format(generated, tmp_path, misa_script):
    cfg, _ = generated
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    path = Path(summary["expert_checkpoint"])
    saved = misa_script.checkpoint.load_checkpoint(path)  # the recipe's own reader
    assert saved["env_id"] == cfg.env_id and saved["step"] == cfg.train_steps
    actor = tool.load_behaviour_policy(path)
    for key, value in saved["actor"].items():
        torch.testing.assert_close(actor.state_dict()[key], value)
    # a damaged file is refused, not loaded
    damaged = tmp_path / path.name
    content = bytearray(path.read_bytes())
    content[-10] ^= 0xFF
    damaged.write_bytes(bytes(content))
    with pytest.raises(misa_script.checkpoint.CheckpointError, match="sha256"):
        tool.load_behaviour_policy(damaged)


def test_tool_runs_as_a_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "generate_dataset.py"), "--train-steps", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: --train-steps must be a positive integer" in proc.stderr
