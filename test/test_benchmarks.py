"""The learning benchmark's harness: a method runs on a tiny file and gets its csv row."""

import argparse
import csv
import json
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _tiny_scale(tmp_path, monkeypatch, tiny_d4rl_file, seeds, ablations):
    """A ``tiny`` scale of 10 updates on a 200-row file, results under ``tmp_path``."""
    learning, report = _load("learning"), _load("report")
    dataset = tiny_d4rl_file(tmp_path / "tiny.hdf5", 3, 1, "Pendulum-v1", n=200)
    tiny = {
        "datasets": [str(dataset)],
        "ablation_datasets": [str(dataset)] if ablations else [],
        "seeds": seeds,
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=10",
            "logger.eval_iter=5",
            "logger.eval_envs=2",
            "logger.eval_steps=10",
            "replay_buffer.batch_size=16",
            "loss.num_mcmc_samples=2",
        ],
    }
    monkeypatch.setitem(learning.SCALES, "tiny", tiny)
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    return learning, report, tmp_path / "results" / "learning_tiny.csv"


def test_harness_runs_a_method_and_reports(tmp_path, monkeypatch, tiny_d4rl_file):
    learning, report, out = _tiny_scale(
        tmp_path, monkeypatch, tiny_d4rl_file, seeds=[0], ablations=True
    )
    learning.main(["--scale", "tiny", "--methods", "bc", "misa-k5", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [(r["method"], r["seed"], r["steps"]) for r in rows] == [
        ("bc", "0", "10"),
        ("misa-k5", "0", "10"),
    ]
    assert all(np.isfinite(float(r["final_score"])) for r in rows)
    # Finished jobs are skipped: a second call runs nothing new.
    learning.main(["--scale", "tiny", "--methods", "bc", "--out", str(out)])
    assert len(list(csv.DictReader(out.open()))) == 2
    # The ablation's override reached the script.
    k5 = next(r for r in rows if r["method"] == "misa-k5")
    cfg = (Path(k5["run_dir"]) / ".hydra" / "overrides.yaml").read_text()
    assert "loss.num_mcmc_samples=5" in cfg

    report.main(["--scale", "tiny"])
    md = (tmp_path / "results" / "learning_tiny.md").read_text()
    assert "| tiny |" in md and "bc" in md
    assert "## Where each method plateaus" in md
    assert (tmp_path / "results" / "learning_tiny_main.png").exists()


def test_in_progress_report_reads_the_runs_own_logs(
    tmp_path, monkeypatch, tiny_d4rl_file
):
    learning, report, out = _tiny_scale(
        tmp_path, monkeypatch, tiny_d4rl_file, seeds=[0, 1], ablations=False
    )
    learning.main(["--scale", "tiny", "--methods", "bc", "--agents", "--out", str(out)])
    (row,) = {r["run_dir"] for r in csv.DictReader(out.open())}
    run_dir = Path(row)
    summary = json.loads((run_dir / "summary.json").read_text())
    # the logs hold what the run recorded in memory: steps 5 and 10, each agent
    expected = {step: list(values) for step, values in summary["scores"]}
    curves = report.eval_curves(run_dir)
    assert list(curves) == [5, 10]
    for step in curves:
        np.testing.assert_allclose(curves[step], expected[step], rtol=1e-6)
    # a finished run (a row in the csv) is left out; one without a row is listed
    listed = tmp_path / "results" / "runs" / "tiny"
    assert run_dir.parent == listed
    text = report.in_progress_report("tiny").read_text()
    assert run_dir.name not in text
    out.unlink()
    text = report.in_progress_report("tiny").read_text()
    last = np.asarray(expected[10])
    best = max(np.mean(v) for v in expected.values())
    assert (
        f"| {run_dir.name} | 10 | {last.mean():.1f} ± {last.std(ddof=1):.1f} "
        f"| {best:.1f} |" in text
    )
    # a row in parity_<scale>.csv (the authors' code) also marks it finished
    parity = tmp_path / "results" / "parity_tiny.csv"
    parity.write_text(f"scale,method,run_dir\ntiny,misa-authors-code,{row}\n")
    assert run_dir.name not in report.in_progress_report("tiny").read_text()


def test_job_overrides_select_method_and_ablation(monkeypatch):
    learning = _load("learning")
    job = learning.Job("small", "datasets/x.hdf5", "misa-dv", 2)
    ov = job.overrides()
    assert "loss.mi_estimator=dv" in ov and "env.seed=2" in ov and "num_agents=1" in ov
    assert not any("algorithm" in o for o in ov) and job.script == learning.SCRIPT
    cql = learning.Job("small", "d.hdf5", "cql", 0)
    assert "+algorithm=cql" in cql.overrides()
    assert cql.script == learning.BASELINE_SCRIPT
    names = [j.name for j in learning.jobs_for("small")]
    # small: 3 seeds x 5 methods on the shipped dataset, and the ablations
    assert len(names) == len(set(names)) == 3 * 5 + 3 * len(learning.ABLATIONS)
    # --seeds adds seeds to a scale: the same jobs at those seeds only
    extra = learning.jobs_for("small", [3, 4])
    assert {j.seed for j in extra} == {3, 4}
    assert len(extra) == 2 * 5 + 2 * len(learning.ABLATIONS)
    # a scale's dataset_ablations add those methods on that dataset only
    spec = {
        "datasets": ["a.hdf5", "b.hdf5"],
        "ablation_datasets": ["a.hdf5"],
        "ablations": ["misa-k5"],
        "dataset_ablations": {"b.hdf5": ["misa-no-ba"]},
        "seeds": [0, 1],
        "overrides": [],
    }
    monkeypatch.setitem(learning.SCALES, "two", spec)
    ablations = {
        (j.dataset, j.method, j.seed)
        for j in learning.jobs_for("two")
        if j.method.startswith("misa-")
    }
    assert ablations == {
        (d, m, s)
        for d, m in (("a.hdf5", "misa-k5"), ("b.hdf5", "misa-no-ba"))
        for s in (0, 1)
    }


def test_agents_group_a_methods_consecutive_seeds():
    learning = _load("learning")
    jobs = [
        learning.Job("small", "d.hdf5", method, seed)
        for method in ("misa", "iql")
        for seed in (0, 1, 2, 4)
    ]
    grouped = learning.group_jobs(jobs)
    assert [(j.method, j.seeds) for j in grouped] == [
        ("misa", [0, 1, 2]),
        ("misa", [4]),  # a gap in the seeds starts another job
        ("iql", [0, 1, 2]),
        ("iql", [4]),
    ]
    group = grouped[0]
    assert group.name == "d__misa__seeds0-2"
    # runs of two csvs never share a folder (a checkpoint there would be continued)
    runs = learning.RESULTS / "runs"
    own = learning.run_dir_of(group, learning.RESULTS / "learning_small.csv")
    other = learning.run_dir_of(group, learning.RESULTS / "learning_small_agents.csv")
    assert own == runs / "small" / group.name
    assert other == runs / "learning_small_agents" / group.name
    assert "num_agents=3" in group.overrides() and "env.seed=0" in group.overrides()


def test_harness_runs_a_methods_seeds_as_one_job(tmp_path, monkeypatch, tiny_d4rl_file):
    learning = _load("learning")
    dataset = tiny_d4rl_file(tmp_path / "tiny.hdf5", 3, 1, "Pendulum-v1", n=200)
    tiny = {
        "datasets": [str(dataset)],
        "ablation_datasets": [],
        "seeds": [0, 1],
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=6",
            "logger.eval_iter=3",
            "logger.eval_envs=2",
            "logger.eval_steps=10",
            "replay_buffer.batch_size=16",
            "network.actor_hidden_sizes=[8]",
            "network.critic_hidden_sizes=[8]",
        ],
    }
    monkeypatch.setitem(learning.SCALES, "tiny", tiny)
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    out = tmp_path / "results" / "learning_tiny.csv"
    args = ["--scale", "tiny", "--methods", "td3bc", "--out", str(out)]
    learning.main([*args, "--agents"])
    rows = list(csv.DictReader(out.open()))
    assert [(r["method"], r["seed"]) for r in rows] == [("td3bc", "0"), ("td3bc", "1")]
    assert {Path(r["run_dir"]).name for r in rows} == {"tiny__td3bc__seeds0-1"}
    summary = json.loads((Path(rows[0]["run_dir"]) / "summary.json").read_text())
    for row, agent in zip(rows, summary["agents"]):
        assert float(row["final_score"]) == round(agent["final_score"], 3)
        assert float(row["final_score"]) == round(
            summary["scores"][-1][1][agent["seed"]], 3
        )
    # the group's seeds count as done for single-seed runs too
    learning.main(args)
    assert len(list(csv.DictReader(out.open()))) == 2


def test_missing_dataset_names_its_generator_command(tmp_path, monkeypatch, capsys):
    learning = _load("learning")
    absent = "datasets/extra/walker2d-medium-expert-v0.hdf5"
    monkeypatch.setitem(
        learning.SCALES,
        "tiny",
        {"datasets": [absent], "ablation_datasets": [], "seeds": [0], "overrides": []},
    )
    out = tmp_path / "rows.csv"
    with pytest.raises(SystemExit, match="Missing datasets") as err:
        learning.main(["--scale", "tiny", "--out", str(out)])
    assert (
        f"{absent}: python tools/generate_dataset.py --env Walker2d-v5 "
        "--recipes medium-expert" in str(err.value)
    )
    # Leaving the dataset out runs nothing and needs no file.
    learning.main(
        ["--scale", "tiny", "--datasets", "other", "--dry-run", "--out", str(out)]
    )
    assert capsys.readouterr().out.startswith("0 jobs to run")


def _two_episode_file(path):
    """Episodes of return 1 and 5 between R_random 0 and R_expert 10: average 30."""
    from torchrl_misa.data import write_d4rl_hdf5

    n = 4
    data = {
        "observations": np.zeros((n, 3), "f4"),
        "next_observations": np.zeros((n, 3), "f4"),
        "actions": np.zeros((n, 1), "f4"),
        "rewards": np.array([0, 1, 2, 3], "f4"),
        "terminals": np.array([0, 1, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 1], bool),
    }
    meta = {"env_id": "Pendulum-v1", "random_return": 0.0, "expert_return": 10.0}
    return write_d4rl_hdf5(path, data, meta)


def test_rows_of_a_regenerated_dataset_are_refused(tmp_path, monkeypatch):
    learning = _load("learning")
    dataset = _two_episode_file(tmp_path / "set-medium-v0.hdf5")
    spec = {
        "datasets": [str(dataset)],
        "ablation_datasets": [],
        "seeds": [0],
        "overrides": [],
    }
    monkeypatch.setitem(learning.SCALES, "tiny", spec)
    out = tmp_path / "rows.csv"
    row = dict.fromkeys(learning.FIELDS, "1")
    row.update(dataset="set-medium-v0", method="cql", seed="0", run_dir="r/x")

    def write(dataset_score):
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=learning.FIELDS)
            writer.writeheader()
            writer.writerow({**row, "dataset_score": dataset_score})

    args = ["--scale", "tiny", "--methods", "bc", "--dry-run", "--out", str(out)]
    write("30.0")  # the rows' file: (10 + 50) / 2
    learning.main(args)
    write("31.2")  # another file of the same name
    with pytest.raises(SystemExit, match="not the file the set-medium-v0 rows"):
        learning.main(args)
    # the other datasets of the csv are not checked: their files may be elsewhere
    write("31.2")
    learning.main([*args[:-2], "--datasets", "other", "--out", str(out)])


def test_dataset_file_is_pinned_before_any_row(tmp_path, monkeypatch):
    import hashlib

    learning = _load("learning")
    dataset = _two_episode_file(tmp_path / "set-medium-v0.hdf5")
    spec = {"datasets": [str(dataset)], "ablation_datasets": [], "seeds": [0]}
    monkeypatch.setitem(learning.SCALES, "tiny", {**spec, "overrides": []})
    out = tmp_path / "rows.csv"
    args = ["--scale", "tiny", "--methods", "bc", "--dry-run", "--out", str(out)]
    learning.main(args)
    assert not out.exists()  # no row yet, but the file is pinned
    record = json.loads((tmp_path / "rows.datasets.json").read_text())
    assert record == {"set-medium-v0": hashlib.sha256(dataset.read_bytes()).hexdigest()}
    learning.main(args)  # the same file again
    with dataset.open("ab") as f:  # a regenerated file of the same name
        f.write(b"\0")
    with pytest.raises(SystemExit, match="not the file the set-medium-v0 runs"):
        learning.main(args)


def test_report_refuses_one_dataset_from_two_files():
    report = _load("report")
    rows = [
        {"dataset": "a", "dataset_score": "6.619"},
        {"dataset": "a", "dataset_score": "6.6191"},  # rounding: one file
        {"dataset": "b", "dataset_score": "nan"},
        {"dataset": "b", "dataset_score": "nan"},
    ]
    report.check_one_file_per_dataset(rows, "x.csv")
    rows.append({"dataset": "a", "dataset_score": "4.866"})
    with pytest.raises(SystemExit, match=r"a: 6.619 \(2 rows\), 4.866 \(1 rows\)"):
        report.check_one_file_per_dataset(rows, "x.csv")


# ---------------------------------------------------------------- parity harness
# benchmarks/parity/ trains the authors' JAX MISA with our data and evaluation,
# rewritten in numpy; these tests hold that copy to the package and the script.
def _load_parity(name):
    path = REPO / "benchmarks" / "parity" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"parity_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, processing, normalize",
    [
        ("pendulum-x-v0.hdf5", "auto", False),  # rewards untouched
        ("antmaze-umaze-v2.hdf5", "auto", True),  # 4 r - 2, by its name
        ("pen-human-v1.hdf5", "auto", False),  # min-max to [-1, 1]
        ("pendulum-y-v0.hdf5", "minmax", True),
    ],
)
def test_parity_transitions_are_the_buffers(
    tmp_path, tiny_d4rl_file, name, processing, normalize
):
    from torchrl_misa.data import load_offline_data

    protocol = _load_parity("protocol")
    path = tiny_d4rl_file(tmp_path / name, 3, 2, "Pendulum-v1", n=200)
    offline = load_offline_data(
        str(path),
        8,
        reward_processing=processing,
        normalize_observations=normalize,
        root=tmp_path / "cache",
    )
    rb = offline.replay_buffer
    ours = rb[:]  # every stored transition, transformed as a sample is
    data, norm = protocol.read_transitions(
        path, reward_processing=processing, normalize_observations=normalize
    )
    assert len(data["rewards"]) == len(rb) == 200  # the last transition is kept
    np.testing.assert_allclose(data["observations"], ours["observation"], atol=1e-6)
    np.testing.assert_array_equal(data["actions"], ours["action"])
    assert np.abs(data["actions"]).max() == np.float32(0.999)
    np.testing.assert_allclose(data["rewards"], ours["next", "reward"][:, 0], atol=1e-5)
    terminal = ours["next", "terminated"][:, 0].numpy()
    np.testing.assert_array_equal(data["dones"], terminal)
    # terminal next states are zeroed by TorchRL and never bootstrapped from
    np.testing.assert_allclose(
        data["next_observations"][~terminal],
        ours["next", "observation"][~terminal],
        atol=1e-6,
    )
    if normalize:
        np.testing.assert_allclose(norm[0], offline.obs_norm.loc, rtol=1e-6)
        np.testing.assert_allclose(norm[1], offline.obs_norm.scale, rtol=1e-6)
    else:
        assert norm is None


def test_parity_refuses_an_antmaze_file_it_cannot_name(tmp_path, tiny_d4rl_file):
    protocol = _load_parity("protocol")
    path = tiny_d4rl_file(tmp_path / "Ant_maze_big-maze.hdf5", 3, 2, "Pendulum-v1")
    with pytest.raises(ValueError, match="replay_buffer.reward_processing=antmaze"):
        protocol.read_transitions(path)


def _linear_tanh_policy(obs_dim, act_dim):
    import torch
    from tensordict.nn import TensorDictModule

    torch.manual_seed(0)
    linear = torch.nn.Linear(obs_dim, act_dim)
    module = TensorDictModule(
        torch.nn.Sequential(linear, torch.nn.Tanh()), ["observation"], ["action"]
    )
    weight, bias = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    return module, lambda obs: np.tanh(obs @ weight.T + bias)


def test_parity_evaluation_is_the_scripts(tmp_path, tiny_d4rl_file, misa_script):
    """Same returns, copy by copy, for two evaluations; 250 steps cross Pendulum's 200-step limit."""
    from omegaconf import OmegaConf

    from torchrl_misa.data import load_offline_data

    protocol = _load_parity("protocol")
    utils = misa_script.utils
    path = tiny_d4rl_file(tmp_path / "pendulum.hdf5", 3, 1, "Pendulum-v1", n=200)
    data = load_offline_data(
        str(path), 8, normalize_observations=True, root=tmp_path / "cache"
    )
    cfg = OmegaConf.create(
        {"env": {"name": None}, "num_agents": 1, "logger": {"eval_envs": 3}}
    )
    env = utils.make_environment(cfg, data, "cpu")
    policy, act = _linear_tanh_policy(3, 1)
    _, norm = protocol.read_transitions(path, normalize_observations=True)
    envs = protocol.EvalEnvs("Pendulum-v1", 3, norm)
    for step in (500, 1000):
        seed = utils.eval_seed(7, step)
        assert protocol.eval_seed(7, step) == seed
        ours = utils.evaluate(env, policy, 250, seed=seed)
        theirs = envs.evaluate(act, 250, seed=seed)
        np.testing.assert_allclose(theirs, ours, rtol=1e-4)
    assert len(set(np.round(theirs, 3))) == 3  # the copies start apart


def test_parity_evaluation_seeded_once_is_torchrls_chain(tmp_path):
    """The scheme up to commit 45600be: the env seeded once with seed + 10_000, then rollouts."""
    import functools

    from torchrl.envs import ExplorationType, SerialEnv, set_exploration_type

    from torchrl_misa.data import make_env

    protocol = _load_parity("protocol")
    env = SerialEnv(3, functools.partial(make_env, "Pendulum-v1"))
    env.set_seed(4 + 10_000)
    policy, act = _linear_tanh_policy(3, 1)
    envs = protocol.EvalEnvs("Pendulum-v1", 3, seed=4 + protocol.EVAL_SEED_OFFSET)
    for _ in range(2):  # the second rollout starts where the first left the envs
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = env.rollout(250, policy, break_when_any_done=False)
        reward = td["next", "reward"][..., 0].numpy()
        done = td["next", "done"][..., 0].numpy()
        first_end = done.argmax(1)
        ours = [reward[i, : first_end[i] + 1].sum() for i in range(3)]
        np.testing.assert_allclose(envs.evaluate(act, 250), ours, rtol=1e-4)


def test_parity_settings_are_hydras(misa_script):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    protocol = _load_parity("protocol")
    overrides = [
        "preset=demo",
        "env.seed=3",
        "optim.gradient_steps=4000",
        "loss.step_size=2",
    ]
    with initialize_config_dir(str(protocol.CONFIG_DIR), version_base="1.2"):
        cfg = compose("config", overrides=overrides)
    ours = protocol.load_config(overrides)
    for section in ("env", "replay_buffer", "optim", "network", "loss"):
        assert ours[section] == OmegaConf.to_container(cfg[section], resolve=True)
    assert ours["env"]["seed"] == cfg.env.seed == 3
    for key in ("log_interval", "eval_iter", "eval_envs", "eval_steps", "eval_last"):
        assert ours["logger"][key] == cfg.logger[key]
    with pytest.raises(KeyError, match="replay_buffer.batch_sise"):
        protocol.load_config(["replay_buffer.batch_sise=3"])


def test_parity_scores_are_the_packages():
    from torchrl_misa.data import (
        dataset_average_normalized_score,
        normalized_score,
        reference_returns,
    )

    protocol = _load_parity("protocol")
    path = protocol.DEMO_DATASET
    low, high = protocol.reference_returns(path)
    assert (low, high) == reference_returns(str(path))
    returns = protocol.dataset_episode_returns(path)
    assert len(returns) == 42  # the file's 42 time limits
    ours = np.mean(protocol.normalized_score(returns, low, high))
    assert ours == pytest.approx(dataset_average_normalized_score(str(path)), abs=1e-9)
    np.testing.assert_allclose(
        protocol.normalized_score([-1000.0, 0.0], low, high),
        normalized_score(str(path), np.array([-1000.0, 0.0])),
    )


def test_authors_config_maps_our_settings():
    train_authors = _load_parity("train_authors")
    protocol = train_authors.protocol
    config = train_authors.authors_config(protocol.load_config(["preset=demo"]), 1)
    # the demo preset over config.yaml, in the authors' names
    assert config == {
        "discount": 0.99,
        "policy_lr": 1e-4,
        "qf_lr": 3e-4,
        "soft_target_update_rate": 0.005,
        "n_actions": 10,
        "min_q_weight": 5.0,
        "bc_weight_misa": 0.5,
        "unbiased_grad": True,
        "unbiased_weight": 0.1,
        "mcmc_burnin_steps": 5,
        "mcmc_num_leapfrog_steps": 2,
        "mcmc_step_size": 1,
        "backup_entropy": False,
        "lagrange": False,
        "target_action_gap": 0.0,
        "target_entropy": -1.0,
    }
    for override, message in (
        ("loss.mi_estimator=dv", "loss.mi_estimator='dv'"),
        ("optim.alpha_lr=3e-4", "optim.alpha_lr=0.0003"),
        ("loss.step_size=0.5", "loss.step_size=0.5"),
    ):
        cfg = protocol.load_config(["preset=demo", override])
        with pytest.raises(SystemExit, match="cannot run these settings") as err:
            train_authors.authors_config(cfg, 1)
        assert message in str(err.value)


def test_authors_code_missing_says_how_to_get_it(monkeypatch, tmp_path):
    authors = _load_parity("authors")
    monkeypatch.delenv(authors.ENV_VAR, raising=False)
    with pytest.raises(SystemExit, match="git clone https://github.com/sail-sg/MISA"):
        authors.import_authors(None)
    with pytest.raises(SystemExit, match="has no algos/misa.py"):
        authors.import_authors(tmp_path)


def test_bootstrap_interval_is_the_exact_bootstraps():
    """With 3 seeds a side, all 27 x 27 resamples can be listed: the percentiles agree."""
    import itertools

    report = _load("report")
    a, b = np.array([10.0, 14.0, 30.0]), np.array([1.0, 5.0, 6.0])
    diff, low, high = report.bootstrap_diff(a, b, n=40_000)
    means_a = [np.mean(c) for c in itertools.product(a, repeat=3)]
    means_b = [np.mean(c) for c in itertools.product(b, repeat=3)]
    exact = np.subtract.outer(means_a, means_b).ravel()
    assert diff == pytest.approx(a.mean() - b.mean())
    # each end is the exact distribution's 2.5% / 97.5% quantile (an atom of it)
    tol = 0.005
    assert (exact < low).mean() <= 0.025 + tol <= (exact <= low).mean() + 2 * tol
    assert (exact > high).mean() <= 0.025 + tol <= (exact >= high).mean() + 2 * tol


def test_welch_interval_is_the_textbook_formula():
    from scipy.stats import t

    report = _load("report")
    a, b = np.array([10.0, 14.0, 30.0, 22.0]), np.array([1.0, 5.0, 6.0])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t.ppf(0.975, df) * np.sqrt(va + vb)
    diff = a.mean() - b.mean()
    np.testing.assert_allclose(report.welch_interval(a, b), [diff - half, diff + half])


def _parity_run(tmp_path, method, seed, scores):
    run_dir = tmp_path / "runs" / f"pendulum__{method}__seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(
        json.dumps({"scores": [[500 * (i + 1), s] for i, s in enumerate(scores)]})
    )
    return {
        "scale": "tiny",
        "dataset": "pendulum",
        "method": method,
        "seed": seed,
        "steps": 500 * len(scores),
        "final_score": scores[-1],
        "best_score": max(scores),
        "last_mean_score": np.mean(scores[-5:]),
        "dataset_score": 3.9,
        "wall_s": 1.0,
        "run_dir": str(run_dir),
    }


def _write_rows(path, rows):
    learning = _load("learning")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=learning.FIELDS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    "offset, verdict", [(0.0, "within seed noise"), (60.0, "outside")]
)
def test_parity_report_tables_ours_and_theirs(tmp_path, monkeypatch, offset, verdict):
    report = _load("report")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    finals = {0: 20.0, 1: 35.0, 2: 5.0}
    ours = [_parity_run(tmp_path, "misa", s, [1.0, f]) for s, f in finals.items()]
    ours.append(_parity_run(tmp_path, "bc", 0, [1.0, 2.0]))  # not a parity row
    theirs = [
        _parity_run(tmp_path, "misa-authors-code", s, [1.0, f + offset])
        for s, f in [(0, 15.0), (1, 30.0), (2, 10.0)]
    ]
    _write_rows(tmp_path / "learning_tiny.csv", ours)
    _write_rows(tmp_path / "parity_tiny.csv", theirs)
    report.main(["--scale", "tiny", "--parity"])
    md = (tmp_path / "parity_tiny.md").read_text()
    # mean ± sample std over the seeds, written out
    assert "| misa | 0,1,2 | 20.0 ± 15.0 (n=3) |" in md
    assert "| bc |" not in md
    assert verdict in md
    diff = np.mean(list(finals.values())) - np.mean([15.0, 30.0, 10.0]) - offset
    assert f"| misa | {diff:+.1f} [" in md
    assert (tmp_path / "parity_tiny.png").exists()


def test_parity_report_without_the_authors_runs_says_how(tmp_path, monkeypatch):
    report = _load("report")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match="train_authors.py"):
        report.main(["--scale", "tiny", "--parity"])


@pytest.mark.parametrize(
    "misa_offset, verdict",
    [
        (0.0, "tie"),
        (50.0, "win"),
        (-50.0, "lose"),
        # the bootstrap interval excludes 0 (+0.7 low), Welch's does not (-0.7)
        (4.5, "borderline"),
    ],
)
def test_misa_is_compared_with_the_best_baseline(misa_offset, verdict):
    report = _load("report")

    def rows(method, finals):
        return [
            {"dataset": "d", "method": method, "final_score": f, "last_mean_score": f}
            for f in finals
        ]

    cql = [30.0, 34.0, 26.0, 31.0, 29.0]  # the best baseline: mean 30
    misa = [f + misa_offset for f in (28.0, 35.0, 25.0, 33.0, 29.0)]  # mean 30
    table = report.versus_best_baseline(
        rows("misa", misa)
        + rows("cql", cql)
        + rows("bc", [1.0, 2.0, 3.0])
        + rows("iql", [50.0])  # one seed: no interval, not a candidate
    )
    final = next(line for line in table if "| final |" in line)
    assert "| cql (n=5) |" in final
    assert f"| {np.mean(misa) - np.mean(cql):+.1f} [" in final
    assert final.endswith(f"| {verdict} |")


def _agents_meta() -> dict:
    """The run description the agents' table writes, every field a placeholder."""
    fields = ("command", "device", "cpu", "cpu_count", "threads", "torch")
    fields += ("loadavg", "loadavg_end", "batch", "obs_dim", "act_dim")
    return dict.fromkeys(fields + ("burnin", "leapfrog", "note"), "x")


def test_agent_throughput_summary_and_table(tmp_path):
    """Ratios within one mode, the paper run's projected hours, failed rows kept."""
    bench = _load("bench_update")

    def row(setting, mode, n, per_agent):
        return {
            "setting": setting,
            "algorithm": "misa",
            "mode": mode,
            "agents": n,
            "median_step_ms": 1e3 / per_agent,
            "updates_per_s": per_agent,
            "agent_updates_per_s": n * per_agent,
            "warmup_s": 0.0,
        }

    results = {
        "small/misa/eager/1": row("small", "eager", 1, 8.0),
        "small/misa/eager/5": row("small", "eager", 5, 6.0),
        "paper/misa/eager/1": row("paper", "eager", 1, 2.0),
        "paper/misa/eager/10": row("paper", "eager", 10, 1.5),
        "paper/misa/cudagraph/1": {
            "setting": "paper",
            "algorithm": "misa",
            "mode": "cudagraph",
            "agents": 1,
            "failed": "RuntimeError: a | pipe\nand a newline",
        },
        "paper/authors_jax": {
            "setting": "paper",
            "updates_per_s": 3.0,
            "median_step_ms": 1e3 / 3.0,
            "warmup_s": 0.0,
        },
    }
    summary = bench.summarise_agents(results)
    assert summary["small_5_agents_vs_1_eager"] == pytest.approx(30.0 / 8.0)
    assert summary["paper_10_agents_vs_1_eager"] == pytest.approx(15.0 / 2.0)
    assert summary["paper_10_agents_vs_1_eager_meets_5.0"]
    # 1.2M updates at 1.5 updates/s per agent, at 2.0 for a lone agent
    hours = summary["paper_hours_for_1200000_updates_10_agents_eager"]
    assert hours == pytest.approx(1.2e6 / 1.5 / 3600)
    lone = summary["paper_hours_for_1200000_updates_1_agent_eager"]
    assert lone == pytest.approx(1.2e6 / 2.0 / 3600)
    # nothing compiled or captured ran: no ratio against the authors' code
    assert not any("vs_authors_jax" in name for name in summary)
    assert not any("cudagraph" in name for name in summary)
    meta = _agents_meta()
    path = tmp_path / "agents.md"
    bench.write_agents_markdown(path, meta, results, summary)
    lines = path.read_text().splitlines()
    assert "| paper_10_agents_vs_1_eager | 7.50 | >= 5.0 on a GPU |" in lines
    failed = [line for line in lines if "failed:" in line]
    assert failed == [
        "| paper | misa | cudagraph | 1 | failed: RuntimeError: a / pipe "
        "and a newline | | | |"
    ]


def test_update_flops_counts_forward_and_both_backward_multiplies():
    flops = _load("update_flops")
    batch, n_in, n_out = 32, 7, 5
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in, requires_grad=True)
    with flops.MatmulLog() as log:
        layer(x).sum().backward()
    # forward, gradient of the input, gradient of the weight: 2 * batch * in * out each
    assert sum(log.flops.values()) == 3 * 2 * batch * n_in * n_out
    assert sum(log.calls.values()) == 3
    # each recorded multiply can be timed from its shapes alone
    for key in log.calls:
        assert flops.op_seconds(*key, repeats=2) > 0


def test_agent_throughput_over_repeats(tmp_path):
    """Ratios formed within each repeat, then their median and range; failures kept."""
    bench = _load("bench_update")

    def row(mode, n, per_agent):
        return {
            "setting": "small",
            "algorithm": "misa",
            "mode": mode,
            "agents": n,
            "median_step_ms": 1e3 / per_agent,
            "mean_step_ms": 1e3 / per_agent,
            "updates_per_s": per_agent,
            "agent_updates_per_s": n * per_agent,
            "warmup_s": 1.0,
        }

    # (one agent, per agent of five) in each of three repeats
    rates = [(10.0, 6.0), (8.0, 5.0), (12.0, 6.6)]
    runs = []
    for i, (one, five) in enumerate(rates):
        run = {
            "small/misa/eager/1": row("eager", 1, one),
            "small/misa/eager/5": row("eager", 5, five),
        }
        run["small/misa/compiled/1"] = (
            {"setting": "small", "algorithm": "misa", "mode": "compiled", "agents": 1}
            | {"failed": "RuntimeError: boom"}
            if i == 1
            else row("compiled", 1, 20.0)
        )
        runs.append(run)
    summary, by_run = bench.summarise_repeats(runs)
    ratios = [5 * five / one for one, five in rates]  # 3.0, 3.125, 2.75
    assert by_run["small_5_agents_vs_1_eager"] == pytest.approx(ratios)
    assert summary["small_5_agents_vs_1_eager"] == pytest.approx(3.0)
    assert summary["small_5_agents_vs_1_eager_meets_3.0"]
    combined = bench.combine_repeats(runs)
    one = combined["small/misa/eager/1"]
    assert one["agent_updates_per_s"] == pytest.approx(10.0)
    assert one["rate_range"] == pytest.approx([8.0, 12.0])
    assert combined["small/misa/compiled/1"]["failed"] == "RuntimeError: boom"
    meta = _agents_meta()
    path = tmp_path / "agents.md"
    meta["repeats_done"] = len(runs)
    bench.write_agents_markdown(path, meta, combined, summary, by_run)
    lines = path.read_text().splitlines()
    assert (
        "| small | misa | eager | 1 | 100.0 | 10.00 (8.00 - 12.00) | 10.00 | 1.0 |"
        in (lines)
    )
    assert (
        "| small_5_agents_vs_1_eager | 3.00 | 2.75 - 3.12 | 3.00, 3.12, 2.75 | >= 3.0 |"
        in lines
    )
    assert any("probability 75%" in line for line in lines)  # 1 - 2 / 2**3


def test_profile_counts_one_critic_pass_per_gradient_evaluation():
    """ELU calls per update follow from the sampler's structure, written out here."""
    prof = _load("profile_update")
    burnin, k, leapfrog = 2, 3, 2
    args = argparse.Namespace(
        obs_dim=3,
        act_dim=2,
        batch=4,
        burnin=burnin,
        leapfrog=leapfrog,
        warmup=1,
        steps=2,
    )
    run = prof.profile_group(2, hidden=8, k=k, args=args)
    # one gradient at the chain's start, then one per leapfrog step of every
    # burn-in and sampling transition; the loss adds Q(s, a), Q(s, a_pi) and
    # the target's Q(s', a')
    passes = 1 + (burnin + k) * leapfrog + 3
    layers = 2  # the critic's two hidden ELU layers
    assert run["ops"]["aten::elu"]["calls"] == args.steps * layers * passes
    # every pass but the target's is differentiated
    backward = run["ops"]["aten::elu_backward"]["calls"]
    assert backward == args.steps * layers * (passes - 1)
    assert run["families"]["matrix multiplies"] > 0


def test_agent_repeats_are_saved_as_they_finish(tmp_path, monkeypatch):
    """A run stopped in its second repeat keeps the first, marked partial."""
    bench = _load("bench_update")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    done = []

    def fake_run_agents(args, device):
        if done:
            raise KeyboardInterrupt  # stopped during the second repeat
        done.append(1)
        return {
            "small/misa/eager/1": {
                "setting": "small",
                "algorithm": "misa",
                "mode": "eager",
                "agents": 1,
                "median_step_ms": 100.0,
                "mean_step_ms": 100.0,
                "updates_per_s": 10.0,
                "agent_updates_per_s": 10.0,
                "warmup_s": 1.0,
            }
        }

    monkeypatch.setattr(bench, "run_agents", fake_run_agents)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--agents", "1", "--repeats", "2", "--tag", "t"])
    payload = json.loads((tmp_path / "bench_update_agents_t.json").read_text())
    assert payload["meta"]["repeats_done"] == 1 and len(payload["repeats"]) == 1
    text = (tmp_path / "bench_update_agents_t.md").read_text()
    assert "**Partial: 1 of 2 repeats done**" in text
    assert "| small | misa | eager | 1 | 100.0 | 10.00 | 10.00 | 1.0 |" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_baseline_groups_get_their_own_agent_ratio():
    bench = _load("bench_update")
    results = {
        f"small/iql/eager/{n}": {"agent_updates_per_s": rate}
        for n, rate in ((1, 40.0), (5, 130.0))
    }
    summary = bench.summarise_agents(results)
    assert summary == {"small_5_agents_vs_1_eager_iql": pytest.approx(130.0 / 40.0)}


def test_sampler_bias_writes_its_tables(tmp_path, monkeypatch):
    bias = _load("sampler_bias")
    monkeypatch.setattr(bias, "RESULTS", tmp_path)
    record = bias.main(["--seeds", "0", "--states", "64", "--chains", "200"])
    saved = json.loads((tmp_path / "sampler_bias.json").read_text())
    assert saved["modes"] == record["modes"] and saved["seeds"] == [0]
    modes = record["modes"]
    assert modes["whitened"][0]["bias"] < modes["authors"][0]["bias"]
    assert modes["authors"][0]["acceptance"] < modes["whitened"][0]["acceptance"]
    assert abs(record["normal"]["exact"][0]["variance"] - 1) < 0.05
    md = (tmp_path / "sampler_bias.md").read_text()
    assert (
        "`python benchmarks/sampler_bias.py --seeds 0 --states 64 --chains 200`" in md
    )
    whitened = f"| `whitened` (default) | {modes['whitened'][0]['bias']:.3f} |"
    assert whitened in md


@pytest.mark.parametrize(
    "curve, expected",
    [
        ([0, 10, 40, 61, 60, 59, 62, 60], 300),  # within 5 of 60.3 from index 3
        ([50, 50, 50, 50], 0),  # flat from the start
        ([0, 60, 0, 60, 0, 60], None),  # the last point is 20 from the end's mean
        ([0, 60, 61, 20, 60, 60, 60], 400),  # a late dip resets the plateau
    ],
)
def test_plateau_step(curve, expected):
    report = _load("report")
    steps = np.arange(len(curve)) * 100
    assert report.plateau_step(steps, curve) == expected


def test_plateau_lines_give_the_seed_mean_peak(tmp_path):
    report = _load("report")
    # two seeds of one group: the peak is the seed mean's (35.0 at step 200), not
    # seed 0's own (60 at step 100); the mean then settles near 5
    seeds = {
        0: [0.0, 60.0, 40.0, 5.0, 6.0, 5.0, 4.0],
        1: [0.0, 0.0, 30.0, 6.0, 4.0, 5.0, 6.0],
    }
    steps = [100 * i for i in range(7)]
    summary = {
        "agents": [{"seed": 0}, {"seed": 1}],
        "scores": [[st, [seeds[0][i], seeds[1][i]]] for i, st in enumerate(steps)],
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = [
        {"dataset": "d", "method": "misa", "seed": s, "run_dir": str(run_dir)}
        for s in (0, 1)
    ]
    mean = [(seeds[0][i] + seeds[1][i]) / 2 for i in range(7)]
    assert max(mean) == 35.0 and mean.index(35.0) == 2
    (line,) = [x for x in report.plateau_lines(rows) if x.startswith("| d |")]
    # the end (mean of the last three, 5.0) is reached from step 300 on
    assert line == "| d | 300 (5.0); peak 35.0 at 200 |"


def test_a_method_keeps_its_colour_in_every_panel(tmp_path, monkeypatch):
    """Dataset "b" lacks CQL: IQL still gets the colour it has where CQL is."""
    import matplotlib
    from matplotlib.colors import to_rgba

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = _load("report")
    rows = []
    for dataset, methods in {"a": ["misa", "cql", "iql"], "b": ["misa", "iql"]}.items():
        for method in methods:
            run_dir = tmp_path / f"{dataset}_{method}"
            run_dir.mkdir()
            summary = {"agents": [{"seed": 0}], "scores": [[100, 1.0], [200, 2.0]]}
            (run_dir / "summary.json").write_text(json.dumps(summary))
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "seed": 0,
                    "run_dir": str(run_dir),
                    "dataset_score": "0",
                }
            )
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert report.plot_curves(rows, ["misa", "cql", "iql"], tmp_path / "c.png", "t")
    (fig,) = figures
    colours = [
        {
            line.get_label().split()[0]: to_rgba(line.get_color())
            for line in ax.get_lines()
        }
        for ax in fig.axes
    ]
    assert set(colours[0]) == {"misa", "cql", "iql", "dataset"}
    assert set(colours[1]) == {"misa", "iql", "dataset"}
    for method in ("misa", "iql"):
        assert colours[0][method] == colours[1][method], method
    assert len({colours[0][m] for m in ("misa", "cql", "iql")}) == 3
    # each band is its line's colour, lighter
    for ax, panel in zip(fig.axes, colours):
        bands = [to_rgba(c.get_facecolor()[0], 1.0) for c in ax.collections]
        assert bands == [v for k, v in panel.items() if k != "dataset"]


def test_d4rl_scale_sets_and_their_commands():
    import subprocess

    learning = _load("learning")
    spec = learning.SCALES["d4rl"]
    assert sorted(spec["datasets"]) == sorted(learning.D4RL_SIZED.values())
    assert "optim.gradient_steps=100000" in spec["overrides"]
    for (task, recipe), path in learning.D4RL_SIZED.items():
        assert path.endswith(f"/{task}-{recipe}-v0.hdf5")
        cmd = learning.GENERATE[path]
        # D4RL's medium level, normalised with D4RL's returns: about 44 (Hopper), 61 (Walker2d)
        random, expert = {
            "hopper": (-20.272305, 3234.3),
            "walker2d": (1.629008, 4592.3),
        }[task]
        stop = float(cmd.split("--stop-at-return ")[1].split()[0])
        assert 0.4 < (stop - random) / (expert - random) < 0.65, (task, stop)
        assert f"--reference-returns {random} {expert}" in cmd
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_d4rl.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def _run_d4rl_with_stand_ins(tmp_path, **env):
    """run_d4rl.sh in a copy of the tree whose training and parity commands only
    log their arguments; returns the logged lines per lane (the finished
    process when the script fails)."""
    import shutil

    bench = tmp_path / "benchmarks"
    (bench / "parity").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "run_d4rl.sh", bench / "run_d4rl.sh")
    sets = {}
    for task in ("hopper", "walker2d"):
        for recipe in ("medium-replay", "medium"):
            path = tmp_path / "data" / f"{task}-{recipe}-v0.hdf5"
            path.parent.mkdir(exist_ok=True)
            path.touch()  # present: nothing is generated
            sets[(task, recipe)] = str(path)
    (bench / "learning.py").write_text(
        "import sys\n"
        f"D4RL_SIZED = {sets!r}\n"
        "GENERATE = {}\n"
        "BASELINES = ('b1', 'b2')\n"
        "if __name__ == '__main__':\n"
        "    args = sys.argv[sys.argv.index('--datasets') + 1:]\n"
        "    task = args[0].split('-')[0]\n"
        "    with open(f'calls_{task}.txt', 'a') as f:\n"
        "        print('train', *args, file=f)\n"
    )
    (bench / "parity" / "run_scale.sh").write_text(
        'task=${2%%-*}\necho "authors $2 seeds $SEEDS" >> "calls_$task.txt"\n'
    )
    result = subprocess.run(
        ["bash", str(bench / "run_d4rl.sh")],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode:
        return result
    return {
        task: (tmp_path / f"calls_{task}.txt").read_text().splitlines()
        for task in ("hopper", "walker2d")
        if (tmp_path / f"calls_{task}.txt").exists()
    }


def test_d4rl_lanes_finish_medium_replay_and_its_parity_runs_first(tmp_path):
    jax = {"JAX_PYTHON": "jax-python", "MISA_AUTHORS_DIR": "misa"}
    calls = _run_d4rl_with_stand_ins(tmp_path, **jax)
    mr, m = "medium-replay-v0", "medium-v0"
    assert calls["hopper"] == [
        f"train hopper-{mr} --methods misa",
        f"authors hopper-{mr} seeds 0 1 2",
        f"train hopper-{mr} --methods misa b1 b2",
        f"train hopper-{mr} hopper-{m}",
    ]
    assert calls["walker2d"] == [
        # the main methods: the set's ablations after the medium set's methods
        f"train walker2d-{mr} --methods misa b1 b2",
        f"authors walker2d-{mr} seeds 0 1 2",
        f"train walker2d-{mr} walker2d-{m}",
    ]


def test_d4rl_one_lane_and_no_authors_code_without_jax(tmp_path):
    env = {"LANES": "walker2d", "JAX_PYTHON": "", "MISA_AUTHORS_DIR": ""}
    calls = _run_d4rl_with_stand_ins(tmp_path, **env)
    assert calls == {
        "walker2d": [
            "train walker2d-medium-replay-v0 --methods misa b1 b2",
            "train walker2d-medium-replay-v0 walker2d-medium-v0",
        ]
    }


def test_d4rl_unknown_lane_is_refused_before_any_lane_starts(tmp_path):
    result = _run_d4rl_with_stand_ins(tmp_path, LANES="hopper walker")
    assert result.returncode == 2
    assert "unknown lane 'walker'" in result.stderr
    assert not list(tmp_path.glob("calls_*.txt"))  # not even the hopper lane ran


def test_diagnostics_table_takes_each_value_logged_at_or_before_the_evaluation(
    tmp_path,
):
    report = _load("report")
    run = tmp_path / "set__misa__seeds0-1"
    logs = {  # agent -> kind/key -> [(step, value)]
        0: {
            "eval/normalized_score": [(10, 1.0), (20, 3.0), (30, 5.0)],
            "train/entropy": [(8, 0.5), (16, 0.25), (24, 0.125), (30, 0.0)],
            "train/alpha": [(10, 2.0), (20, 4.0), (30, 6.0)],
        },
        1: {
            "eval/normalized_score": [(10, 3.0), (20, 7.0), (30, 9.0), (40, 1.0)],
            "train/entropy": [(8, 1.5), (16, 1.25), (24, 1.125), (30, 1.0)],
            "train/alpha": [(10, 4.0), (20, 6.0), (30, 8.0)],
        },
    }
    for agent, files in logs.items():
        for name, rows in files.items():
            path = run / "exp" / "scalars" / f"agent{agent}" / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{s},{v}\n" for s, v in rows))
    lines = report.diagnostics_lines(run, keys=("entropy", "alpha"), most=2)
    # steps every agent reached: 10, 20, 30; two picks: the first and the last
    assert lines[0] == "| updates | score | entropy | alpha |"
    # step 10: scores 1 and 3; entropy logged last at 8: (0.5 + 1.5) / 2
    assert lines[2] == f"| 10 | 2.0 ± {np.std([1, 3], ddof=1):.1f} | 1 | 3 |"
    assert lines[3] == f"| 30 | 7.0 ± {np.std([5, 9], ddof=1):.1f} | 0.5 | 7 |"
    assert len(lines) == 4
    # step 20: entropy logged last at 16, not at 24
    middle = report.diagnostics_lines(run, keys=("entropy", "alpha"), most=3)[3]
    assert middle == f"| 20 | 5.0 ± {np.std([3, 7], ddof=1):.1f} | 0.75 | 5 |"
    assert report.diagnostics_lines(tmp_path / "empty") == []
    section = report.diagnostics_section([run, tmp_path / "empty"])
    assert section[0] == "## MISA's training diagnostics"
    assert f"### {run.name}" in section and "### empty" not in section


def test_parity_diagnostics_pool_both_codes_seeds(tmp_path, monkeypatch):
    report = _load("report")
    monkeypatch.setattr(report, "REPO", tmp_path)

    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{s},{v}\n" for s, v in rows))

    ours = tmp_path / "set__misa__seeds0-1"
    for agent, (score, entropy) in enumerate([(2.0, 0.5), (4.0, 1.5)]):
        logs = ours / "exp" / "scalars" / f"agent{agent}"
        write(logs / "eval" / "normalized_score.csv", [(10, score), (20, 2 * score)])
        write(logs / "train" / "entropy.csv", [(5, entropy), (15, -entropy)])
        write(logs / "train" / "alpha.csv", [(5, 0.25), (15, 0.125)])
    theirs = []
    for seed, (score, log_pi) in enumerate([(1.0, -1.0), (3.0, -2.0), (5.0, -3.0)]):
        run = tmp_path / f"set__misa-authors-code__seed{seed}"
        logs = run / "misa-authors-code" / "scalars"
        # the authors' runs evaluate at one more step: only common steps are shown
        write(
            logs / "eval" / "normalized_score.csv", [(10, score), (20, score), (30, 0)]
        )
        write(logs / "train" / "log_pi.csv", [(10, log_pi), (20, 0.0)])
        write(logs / "train" / "alpha.csv", [(10, seed + 1.0), (20, 0.0)])
        theirs.append(run)
    rows = [
        {"dataset": "set", "method": "misa", "run_dir": ours.name},
        {"dataset": "set", "method": "misa", "run_dir": ours.name},
        *[
            {"dataset": "set", "method": report.THEIRS, "run_dir": r.name}
            for r in theirs
        ],
        {"dataset": "other", "method": "misa", "run_dir": ours.name},  # no theirs
    ]
    lines = report.parity_diagnostics_lines(rows)
    assert "### set" in lines and "### other" not in lines
    table = lines[lines.index("### set") + 2 :]
    assert table[0] == (
        "| updates | score, misa | score, misa-authors-code | entropy, misa | "
        "entropy, misa-authors-code | alpha, misa | alpha, misa-authors-code |"
    )
    # step 10: ours' scores 2, 4; entropy logged last at 5: 0.5, 1.5; alpha 0.25.
    # theirs: scores 1, 3, 5; entropy = -log_pi: 1, 2, 3; alpha 1, 2, 3
    assert table[2] == "| 10 | 3 | 3 | 1 | 2 | 0.25 | 2 |"
    # step 20: ours 4, 8 and the values logged at 15; theirs those logged at 20
    assert table[3] == "| 20 | 6 | 3 | -1 | 0 | 0.125 | 0 |"
    assert table[4] == ""
    assert report.parity_diagnostics_lines(rows[:2]) == []


def test_run_speed_is_per_agent_for_both_codes(tmp_path):
    report = _load("report")

    def write(path, values):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i},{v}\n" for i, v in enumerate(values)))

    # the authors' code: train/updates_per_s; the first window (warm-up) left out
    write(
        tmp_path / "theirs" / "x" / "scalars" / "train" / "updates_per_s.csv",
        [1, 40, 42, 50],
    )
    assert report.run_speed(tmp_path / "theirs") == 42.0
    # ours, a group of 3 agents: time/updates_per_s counts group updates
    group = tmp_path / "ours" / "x" / "scalars"
    write(group / "time" / "updates_per_s.csv", [0.5, 10, 12, 11])
    for agent in range(3):
        (group / f"agent{agent}").mkdir()
    assert report.run_speed(tmp_path / "ours") == 33.0
    write(tmp_path / "one" / "x" / "scalars" / "time" / "updates_per_s.csv", [1, 7])
    assert report.run_speed(tmp_path / "one") == 7.0
    assert report.run_speed(tmp_path / "none") is None


def test_authors_run_checkpoint_logs_and_refusals(tmp_path):
    """The pieces of the authors' runs' resume that need no JAX: logs, checkpoint file."""
    train_authors = _load_parity("train_authors")
    log = train_authors._ScalarLog(tmp_path / "run")
    for step in (5, 10, 15):
        log.log({"train/a": step / 10, "eval/b": -step}, step)
    log.truncate(10)
    for name, values in (
        ("train/a", ["5,0.5", "10,1.0"]),
        ("eval/b", ["5,-5.0", "10,-10.0"]),
    ):
        assert (
            tmp_path / "run" / "scalars" / f"{name}.csv"
        ).read_text().split() == values
    path = tmp_path / "run" / train_authors.CHECKPOINT

    def settings(seed, dataset):
        return {"ours": {"seed": seed, "replay_buffer": {"dataset": dataset}}}

    saved = settings(1, "/work/a/datasets/x.hdf5")
    assert train_authors.load_checkpoint(path, saved) is None
    left = path.with_name(f".{path.name}.123.tmp")  # a save killed half-way
    left.write_bytes(b"\x80")
    train_authors.save_checkpoint(path, {"settings": saved, "step": 10})
    assert train_authors.load_checkpoint(path, saved)["step"] == 10
    assert not left.exists()
    # the same file in a clone at another path: the same run
    clone = settings(1, "/elsewhere/clone/datasets/x.hdf5")
    assert train_authors.load_checkpoint(path, clone)["step"] == 10
    for other in (settings(2, "/work/a/datasets/x.hdf5"), settings(1, "/a/y.hdf5")):
        with pytest.raises(SystemExit, match="other settings: delete it"):
            train_authors.load_checkpoint(path, other)
    path.write_bytes(path.read_bytes()[:7])
    with pytest.raises(SystemExit, match="cannot be read .*delete it"):
        train_authors.load_checkpoint(path, saved)


AUTHORS_RESUME = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1] + "/benchmarks/parity", sys.argv[1] + "/benchmarks"]
import protocol, train_authors
from authors import import_authors

authors = import_authors(None)
cfg = protocol.load_config([
    "preset=demo", "optim.gradient_steps=40", "logger.eval_iter=10",
    "logger.log_interval=5", "checkpoint.interval=10", "logger.eval_envs=2",
    "logger.eval_steps=30", "replay_buffer.batch_size=32", "env.seed=3",
])
straight = train_authors.train(cfg, authors, Path(sys.argv[2]) / "straight")
Learner = authors.MISA

class Stopped(Learner):  # a run killed during its 26th update
    def train(self, batch, bc=False):
        if self.total_steps == 25:
            raise KeyboardInterrupt
        return super().train(batch, bc)

authors.MISA = Stopped
try:
    train_authors.train(cfg, authors, Path(sys.argv[2]) / "resumed")
except KeyboardInterrupt:
    pass
authors.MISA = Learner
resumed = train_authors.train(cfg, authors, Path(sys.argv[2]) / "resumed")
print(json.dumps({"straight": straight["scores"], "resumed": resumed["scores"]}))
"""


@pytest.mark.skipif(
    not (os.environ.get("JAX_PYTHON") and os.environ.get("MISA_AUTHORS_DIR")),
    reason="needs the authors' code and its JAX environment (benchmarks/parity/README.md)",
)
def test_authors_run_resumed_after_a_kill_equals_one_uninterrupted(tmp_path):
    done = subprocess.run(
        [os.environ["JAX_PYTHON"], "-c", AUTHORS_RESUME, str(REPO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout.splitlines()[-1])
    assert "Resuming from" in done.stdout and "(step 20)" in done.stdout
    assert scores["resumed"] == scores["straight"] and len(scores["straight"]) == 4
    # the training metrics of every update after the checkpoint are the same floats
    for name in ("policy_loss", "qf1_loss", "alpha", "log_pi"):
        path = Path("misa-authors-code") / "scalars" / "train" / f"{name}.csv"
        straight = (tmp_path / "straight" / path).read_text()
        assert (tmp_path / "resumed" / path).read_text() == straight
        assert straight.splitlines()[-1].startswith("40,")


def test_a_groups_seeds_give_one_run_folder():
    report = _load("report")
    rows = [
        {"method": "misa", "run_dir": "runs/a__misa__seeds0-1"},
        {"method": "bc", "run_dir": "runs/a__bc__seeds0-1"},
        {"method": "misa", "run_dir": "runs/a__misa__seeds0-1"},
        {"method": "misa", "run_dir": "runs/b__misa__seed0"},
    ]
    assert report.method_run_dirs(rows, "misa") == [
        report.REPO / "runs/a__misa__seeds0-1",
        report.REPO / "runs/b__misa__seed0",
    ]
