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

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sota-implementations" / "misa" / "misa_offline.py"
TINY = [
    "optim.batch_size=32",
    "network.actor_hidden_sizes=[16,16]",
    "network.critic_hidden_sizes=[16,16]",
    "loss.num_mcmc_samples=4",
    "loss.num_burnin=2",
    "eval.episodes=2",
    "eval.max_steps=20",
    "logger.progress_bar=false",
    "logger.log_interval=10",
]


def run(args, tmp_path, name, timeout=240, env=None):
    run_dir = tmp_path / name
    cmd = [sys.executable, str(SCRIPT), *args, f"hydra.run.dir={run_dir}"]
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
        ("antmaze", ["env.eval_env=Pendulum-v1"]),
        ("adroit", ["env.eval_env=Pendulum-v1"]),
        ("kitchen", ["env.eval_env=Pendulum-v1"]),
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
        f"env.dataset={dataset}",
        "optim.gradient_steps=30",
        "eval.interval=15",
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


@pytest.mark.parametrize("algorithm", ["bc", "cql", "iql", "td3bc"])
def test_baselines_share_the_loop(algorithm, pendulum_file, tmp_path):
    args = [
        "preset=demo",
        f"env.dataset={pendulum_file}",
        f"algorithm={algorithm}",
        "optim.gradient_steps=10",
        "eval.interval=10",
        *TINY,
    ]
    proc, run_dir = run(args, tmp_path, algorithm)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["algorithm"] == algorithm


def _assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_rerun_in_its_folder_continues_exactly(pendulum_file, tmp_path, misa_script):
    load = misa_script.checkpoint.load_checkpoint
    base = [
        "preset=demo",
        f"env.dataset={pendulum_file}",
        "eval.interval=20",
        "checkpoint.interval=20",
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
    scores = [
        json.loads((d / "summary.json").read_text())["scores"]
        for d in (full_dir, resumed_dir)
    ]
    assert len(scores[0]) == 2 and scores[0] == scores[1]


def test_resume_after_kill(pendulum_file, tmp_path, misa_script):
    load = misa_script.checkpoint.load_checkpoint
    args = [
        "preset=demo",
        f"env.dataset={pendulum_file}",
        "optim.gradient_steps=100000",
        "eval.interval=100000",
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
        ["preset=locomotion", "env.root=" + str(tmp_path / "empty_cache")],
        tmp_path,
        "offline",
        timeout=120,
        env={"HOME": str(tmp_path)},
    )
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "env.dataset=/path/to/file.hdf5" in err and "preset=demo" in err
    assert time.time() - start < 60


def test_invalid_settings_stop_the_script_before_loading_data(tmp_path):
    # The dataset does not exist: loading it first would fail differently.
    args = [f"env.dataset={tmp_path / 'missing.hdf5'}", "optim.batch_size=0"]
    proc, _ = run([*args, "eval.interval=-5"], tmp_path, "invalid", timeout=120)
    assert proc.returncode != 0
    assert "Invalid configuration:" in proc.stderr
    assert "optim.batch_size=0: must be a positive integer" in proc.stderr
    assert "eval.interval=-5: must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
