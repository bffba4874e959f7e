"""Smoke, resume and no-network tests of sota-implementations/misa/misa_offline.py.

Checkpoint files, failed saves and resume rules are tested in-process in
test_sota_misa_checkpoint.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sota-implementations" / "misa" / "misa_offline.py"
TINY = [
    "replay_buffer.batch_size=32",
    "network.actor_hidden_sizes=[16,16]",
    "network.critic_hidden_sizes=[16,16]",
    "loss.num_mcmc_samples=4",
    "loss.num_burnin=2",
    "logger.eval_envs=2",
    "logger.eval_steps=20",
    "logger.progress_bar=false",
    "logger.log_interval=10",
]


def run(args, tmp_path, name, timeout=240, env=None, script=SCRIPT):
    run_dir = tmp_path / name
    cmd = [sys.executable, str(script), *args, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env
    )
    return proc, run_dir


@pytest.fixture(scope="module")
def pendulum_file(tmp_path_factory, tiny_d4rl_file):
    return tiny_d4rl_file(
        tmp_path_factory.mktemp("data") / "pendulum.hdf5", 3, 1, "Pendulum-v1"
    )


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("demo", []),
        ("locomotion", []),
        # The antmaze / adroit / kitchen tasks need gymnasium-robotics: their
        # wiring (reward processing, critic depth, Lagrange budget) runs on a
        # Pendulum-shaped file, evaluated on Pendulum.
        ("antmaze", ["env.name=Pendulum-v1"]),
        ("adroit", ["env.name=Pendulum-v1"]),
        ("kitchen", ["env.name=Pendulum-v1"]),
    ],
)
def test_presets_run(
    preset, extra, pendulum_file, tmp_path, tiny_d4rl_file, misa_script
):
    dataset = pendulum_file
    if preset == "locomotion":
        dataset = tiny_d4rl_file(tmp_path / "cheetah.hdf5", 17, 6, "HalfCheetah-v5")
    args = [
        f"preset={preset}",
        f"replay_buffer.dataset={dataset}",
        "optim.gradient_steps=30",
        "logger.eval_iter=15",
        # The presets' own critic sizes (3 hidden layers for antmaze) stay.
        *[a for a in TINY if not a.startswith("network.critic")],
        *extra,
    ]
    proc, run_dir = run(args, tmp_path, preset)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final normalised score" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 30 and len(summary["scores"]) == 2
    ckpt = misa_script.checkpoint.load_checkpoint(run_dir / "checkpoints")
    assert ckpt["step"] == 30
    sd = ckpt["recipe"]["loss_module"]
    if preset in ("antmaze", "adroit", "kitchen"):
        assert "log_alpha_prime" in sd  # the Lagrange budget is on
    if preset == "demo":  # the README's learning-curve plot, from the csv log
        plot = subprocess.run(
            [sys.executable, str(SCRIPT.parent / "plot_curve.py"), str(run_dir)]
            + ["-o", str(tmp_path / "curve.png"), "--dataset", str(dataset)],
            capture_output=True,
            text=True,
        )
        assert plot.returncode == 0, plot.stderr
        assert (tmp_path / "curve.png").stat().st_size > 1000
    if preset == "antmaze":  # 3 hidden layers: 4 linear layers per critic
        weights = [
            k for k in sd if k.startswith("qvalue_network_params") and "weight" in k
        ]
        assert len(weights) == 4, weights


BASELINES = REPO / "benchmarks" / "baselines.py"


@pytest.mark.parametrize("algorithm", ["bc", "cql", "iql", "sac", "td3bc"])
def test_baselines_share_the_loop(algorithm, pendulum_file, tmp_path):
    args = [
        "preset=demo",
        f"replay_buffer.dataset={pendulum_file}",
        f"+algorithm={algorithm}",
        "optim.gradient_steps=10",
        "logger.eval_iter=10",
        *TINY,
    ]
    proc, run_dir = run(args, tmp_path, algorithm, script=BASELINES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["algorithm"] == algorithm


def test_baselines_need_a_known_algorithm(tmp_path):
    proc, _ = run(["preset=demo"], tmp_path, "none", script=BASELINES)
    assert proc.returncode != 0 and "+algorithm=<bc|cql|iql|sac|td3bc>" in proc.stderr
    proc, _ = run(["preset=demo", "+algorithm=ppo"], tmp_path, "ppo", script=BASELINES)
    assert (
        "algorithm=ppo: unknown, choose one of bc, cql, iql, sac, td3bc" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_iql_trains_two_seeds_in_one_process(pendulum_file, tmp_path):
    args = [
        "preset=demo",
        f"replay_buffer.dataset={pendulum_file}",
        "+algorithm=iql",
        "num_agents=2",
        "optim.gradient_steps=10",
        "logger.eval_iter=10",
        *TINY,
    ]
    proc, run_dir = run(args, tmp_path, "iql", script=BASELINES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [agent["seed"] for agent in summary["agents"]] == [0, 1]


def _assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("num_agents", [1, 2])
def test_rerun_in_its_folder_continues_exactly(
    pendulum_file, tmp_path, misa_script, num_agents
):
    load = misa_script.checkpoint.load_checkpoint
    base = [
        "preset=demo",
        f"replay_buffer.dataset={pendulum_file}",
        "logger.eval_iter=20",
        "checkpoint.interval=20",
        f"num_agents={num_agents}",
        "env.seed=3",
        *TINY,
    ]
    # Uninterrupted: 40 steps.
    proc, full_dir = run([*base, "optim.gradient_steps=40"], tmp_path, "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 20: return" in proc.stdout
    # Stopped at 20, then the same folder asked for 40 steps (a requeued job).
    proc, half_dir = run([*base, "optim.gradient_steps=20"], tmp_path, "half")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, resumed_dir = run([*base, "optim.gradient_steps=40"], tmp_path, "half")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = half_dir / "checkpoints" / "last.pt"
    assert f"Resuming from {ckpt} (step 20)" in proc.stdout + proc.stderr
    assert "step 20: return" not in proc.stdout  # the first 20 steps did not rerun
    full = load(full_dir / "checkpoints")
    resumed = load(resumed_dir / "checkpoints")
    assert full["step"] == resumed["step"] == 40
    # Same parameters, optimiser moments and step counts: no step lost or repeated.
    _assert_same(full["recipe"], resumed["recipe"])
    # Same evaluations, the one after the resume included.
    summaries = [
        json.loads((d / "summary.json").read_text()) for d in (full_dir, resumed_dir)
    ]
    assert len(summaries[0]["scores"]) == 2
    assert summaries[0]["scores"] == summaries[1]["scores"]
    # One summary per agent, with its seed and its own scores.
    agents = summaries[1]["agents"]
    assert [a["seed"] for a in agents] == [3 + i for i in range(num_agents)]
    for i, agent in enumerate(agents):
        own = [s if num_agents == 1 else s[i] for _, s in summaries[1]["scores"]]
        assert agent["final_score"] == own[-1] and agent["best_score"] == max(own)
    if num_agents > 1:  # the agents are different policies
        assert len({round(a["final_score"], 6) for a in agents}) == num_agents
        for i in range(num_agents):
            assert f"seed {3 + i}: final normalised score" in proc.stdout


def make_recipe(misa_script, pendulum_file, tmp_path, *overrides):
    """MISA's update recipe and data as the script builds them, on the tiny settings."""
    from hydra import compose, initialize_config_dir

    utils = misa_script.utils
    cpu = torch.device("cpu")
    with initialize_config_dir(config_dir=str(SCRIPT.parent), version_base="1.2"):
        cfg = compose(
            "config",
            overrides=[
                "preset=demo",
                f"replay_buffer.dataset={pendulum_file}",
                f"replay_buffer.root={tmp_path}",
                *TINY,
                *overrides,
            ],
        )
    data = utils.make_offline_data(cfg, cpu)
    return utils.make_misa_update(cfg, data, 1, cpu), data


def test_group_agent_starts_as_the_single_run_of_its_seed(
    pendulum_file, misa_script, tmp_path
):
    """Agent i of a group is built from seed + i: its first parameters are a single run's."""

    def recipe(*overrides):
        return make_recipe(misa_script, pendulum_file, tmp_path, *overrides)[0]

    group = recipe("num_agents=3", "env.seed=5").loss_module
    for i in range(3):
        single = recipe("env.seed=" + str(5 + i)).loss_module
        for key, value in single.state_dict().items():
            stacked = group.params.get(tuple(key.split(".")))
            torch.testing.assert_close(stacked[i], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("num_agents", [1, 2])
def test_fixed_alpha_trains_without_an_alpha_optimiser(
    pendulum_file, tmp_path, misa_script, num_agents
):
    """``loss.fixed_alpha=true``: the temperature stays at ``alpha_init``, the rest trains."""
    utils = misa_script.utils
    recipe, data = make_recipe(
        misa_script,
        pendulum_file,
        tmp_path,
        f"num_agents={num_agents}",
        "loss.fixed_alpha=true",
        "loss.alpha_init=0.1",
    )
    assert "alpha" not in recipe.optimizers
    loss = recipe.loss_module
    # a group holds every agent's tensors in `params`, with an agent dimension
    tensors = loss.params if num_agents > 1 else TensorDict.from_module(loss)
    before = tensors.clone()
    for step in range(3):
        batch = recipe.sample(data.replay_buffer)
        utils.update_step(recipe, batch, recipe.active_groups(step))
    alpha = tensors.get("log_alpha").exp()
    torch.testing.assert_close(alpha, torch.full_like(alpha, 0.1), rtol=0, atol=1e-7)
    for name in ("actor_network_params", "qvalue_network_params"):
        assert (tensors.get(name) != before.get(name)).any(), name


def test_resume_after_kill(pendulum_file, tmp_path, misa_script):
    load = misa_script.checkpoint.load_checkpoint
    args = [
        "preset=demo",
        f"replay_buffer.dataset={pendulum_file}",
        "optim.gradient_steps=100000",
        "logger.eval_iter=100000",
        "checkpoint.interval=10",
        *TINY,
    ]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint written before the deadline"
    killed_at = load(ckpt)["step"]
    assert killed_at % 10 == 0 and killed_at > 0
    resumed_args = [a for a in args if not a.startswith("optim.gradient_steps")]
    proc2, resumed_dir = run(
        [*resumed_args, f"optim.gradient_steps={killed_at + 10}", f"resume={ckpt}"],
        tmp_path,
        "after_kill",
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    final = load(resumed_dir / "checkpoints")
    assert final["step"] == killed_at + 10
    # The resumed run kept the killed run's logger experiment.
    assert final["exp_name"] == load(ckpt)["exp_name"]


def test_no_network_no_cache_stops_with_alternatives(tmp_path):
    start = time.time()
    proc, _ = run(
        ["preset=locomotion", "replay_buffer.root=" + str(tmp_path / "empty_cache")],
        tmp_path,
        "offline",
        timeout=120,
        env={"HOME": str(tmp_path)},
    )
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "replay_buffer.dataset=/path/to/file.hdf5" in err and "preset=demo" in err
    assert time.time() - start < 60


def test_invalid_settings_stop_the_script_before_loading_data(tmp_path):
    # The dataset does not exist: loading it first would fail differently.
    args = [
        f"replay_buffer.dataset={tmp_path / 'missing.hdf5'}",
        "replay_buffer.batch_size=0",
    ]
    proc, _ = run(
        [*args, "logger.eval_iter=-5", "optim.num_threads=0"],
        tmp_path,
        "invalid",
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Invalid configuration:" in proc.stderr
    assert "replay_buffer.batch_size=0: must be a positive integer" in proc.stderr
    assert "logger.eval_iter=-5: must be a positive integer" in proc.stderr
    assert "optim.num_threads=0: torch's CPU threads" in proc.stderr
    assert "Traceback" not in proc.stderr


def _linear_layers(params, prefix):
    """``[(weight, bias)]`` of the linear layers under ``prefix``, in order."""
    weights = sorted(
        (k for k in params.keys(True, True) if k[0] == prefix and k[-1] == "weight"),
        key=lambda k: [int(p) for p in k if p.isdigit()],
    )
    return [(params.get(k), params.get(k[:-1] + ("bias",))) for k in weights]


@pytest.mark.parametrize("init", ["authors", "torch"])
def test_network_initialisation_follows_its_formula(
    init, pendulum_file, misa_script, tmp_path
):
    """Hidden weights: variance 1/fan_in (authors: lecun-normal truncated at 2 std)
    or 1/(3 fan_in) (torch: uniform); authors' heads uniform at variance 1e-2/fan_in
    and zero biases; every critic of the ensemble drawn on its own."""
    recipe, _ = make_recipe(
        misa_script,
        pendulum_file,
        tmp_path,
        # after the tiny sizes: the later value wins
        "network.actor_hidden_sizes=[256,256]",
        "network.critic_hidden_sizes=[256,256]",
        f"network.init={init}",
        "num_agents=2",  # a group: no SoftUpdate syncs the targets
    )
    group = recipe.loss_module
    for agent in range(2):
        _check_initialisation(group.params.data[agent], init)


def _check_initialisation(params, init):
    actor = _linear_layers(params, "actor_network_params")
    critics = [
        [(w[i], b[i]) for w, b in _linear_layers(params, "qvalue_network_params")]
        for i in range(2)
    ]
    for layers in (actor, *critics):
        (w_in, b_in), (w_hidden, b_hidden), (w_out, b_out) = layers
        fan_in = w_hidden.shape[1]
        if init == "authors":
            # 65 536 weights: the std's relative standard error is about 0.3%
            assert w_hidden.std().item() == pytest.approx(fan_in**-0.5, rel=0.02)
            bound = 2 * fan_in**-0.5 / 0.87962566103423978
            assert w_hidden.abs().max().item() <= bound + 1e-6
            assert w_hidden.abs().max().item() > 0.95 * bound  # truncated, not clipped
            std_out = (1e-2 / fan_in) ** 0.5
            assert w_out.abs().max().item() <= 3**0.5 * std_out + 1e-7
            for b in (b_in, b_hidden, b_out):
                assert not b.any()
        else:
            assert w_hidden.std().item() == pytest.approx(
                (3 * fan_in) ** -0.5, rel=0.02
            )
            assert b_hidden.any()
    assert not torch.equal(critics[0][1][0], critics[1][1][0])
    # the targets start equal to their critics
    sources = _linear_layers(params, "qvalue_network_params")
    targets = _linear_layers(params, "target_qvalue_network_params")
    for (w, b), (w_target, b_target) in zip(sources, targets):
        assert torch.equal(w, w_target) and torch.equal(b, b_target)
    # the authors' log-std multiplier and offset, trained with the actor
    log_std = {
        k[-1]: v
        for k, v in params.items(True, True)
        if k[0] == "actor_network_params" and k[-1].startswith("log_std_")
    }
    assert {k: v.item() for k, v in log_std.items()} == {
        "log_std_multiplier": 1.0,
        "log_std_offset": -1.0,
    }
