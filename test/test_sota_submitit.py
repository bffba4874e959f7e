"""The recipe's sweeps through hydra's submitit launcher (``submitit_local``).

``submitit_local`` runs each job the way ``submitit_slurm`` does on a cluster
node: the pickled job in a fresh interpreter, requeued on a preemption signal.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sota-implementations" / "misa" / "misa_offline.py"
STEPS = 300
SETTINGS = [
    "preset=demo",
    f"optim.gradient_steps={STEPS}",
    "checkpoint.interval=20",
    "logger.eval_iter=150",
    "logger.eval_envs=1",
    "logger.eval_steps=20",
    "logger.backend=",
    "logger.progress_bar=false",
    "replay_buffer.batch_size=32",
    "network.actor_hidden_sizes=[16,16]",
    "network.critic_hidden_sizes=[16,16]",
    "loss.num_mcmc_samples=4",
    "loss.num_burnin=2",
]


def multirun(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--multirun",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep_dir}",
        # a fresh dataset cache: the jobs of a sweep build it at the same time
        f"replay_buffer.root={sweep_dir.parent / 'cache'}",
        *SETTINGS,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        cwd=sweep_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_d4rl_file):
    return tiny_d4rl_file(
        tmp_path_factory.mktemp("data") / "pendulum.hdf5", 3, 1, "Pendulum-v1"
    )


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, dataset):
    """A 2-job sweep (seeds 0 and 1), each job in its own interpreter."""
    sweep = tmp_path_factory.mktemp("sweep") / "multirun"
    finish(multirun(sweep, f"replay_buffer.dataset={dataset}", "env.seed=0,1"))
    return sweep


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def test_two_jobs_each_write_their_summary(two_seeds):
    runs = [summary(two_seeds / str(job)) for job in (0, 1)]
    assert [run["seed"] for run in runs] == [0, 1]
    for run in runs:
        assert run["steps"] == STEPS
        assert [step for step, _ in run["scores"]] == [150, 300]
    # two seeds, two trainings: their evaluations differ
    assert runs[0]["scores"] != runs[1]["scores"]


def _job_process(sweep: Path, deadline: float) -> int:
    """The pid of the sweep's only job: the child of submitit's local controller."""
    while time.time() < deadline:
        folders = [p for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]
        if folders:
            controller = folders[0].name
            children = Path(f"/proc/{controller}/task/{controller}/children")
            if children.exists() and children.read_text().split():
                return int(children.read_text().split()[0])
        time.sleep(0.1)
    raise AssertionError("the job never started")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_preempted_job_is_requeued_and_continues_its_checkpoint(
    tmp_path, dataset, two_seeds
):
    sweep = tmp_path / "multirun"
    proc = multirun(sweep, f"replay_buffer.dataset={dataset}", "env.seed=0")
    deadline = time.time() + 240
    job = _job_process(sweep, deadline)
    ckpt = sweep / "0" / "checkpoints" / "last.pt"
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint before the deadline"
    # what a cluster sends before preempting a job (submitit's USR2)
    os.kill(job, signal.SIGUSR2)
    finish(proc)

    log = (sweep / "0" / "misa_offline.log").read_text()
    # the signal waits for the update under way, which then saves
    assert "Preemption signal: saving a checkpoint after this update." in log
    resumed = re.findall(r"Resuming from .*last\.pt \(step (\d+)\)", log)
    assert len(resumed) == 1, log
    assert 0 < int(resumed[0]) < STEPS
    # the requeued job ends where the uninterrupted one does (in other time)
    requeued, uninterrupted = summary(sweep / "0"), summary(two_seeds / "0")
    assert requeued.pop("train_s") > 0 and uninterrupted.pop("train_s") > 0
    assert requeued == uninterrupted


def test_learning_benchmark_job_through_the_launcher(tmp_path, dataset):
    """``learning.py --launcher``: a method's seeds as one group job, its folder the run's."""
    spec = importlib.util.spec_from_file_location(
        "learning", REPO / "benchmarks" / "learning.py"
    )
    learning = sys.modules["learning"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learning)
    job = learning.Job("small", str(dataset), "cql", 0, 2)
    run_dir = tmp_path / job.name
    cmd = learning.job_command(job, run_dir, "submitit_local")
    tiny = [s for s in SETTINGS if not s.startswith(("preset", "loss."))]
    proc = subprocess.run(
        [*cmd, *tiny, "optim.gradient_steps=20", "logger.eval_iter=20"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = summary(run_dir)
    assert record["algorithm"] == "cql"
    assert [agent["seed"] for agent in record["agents"]] == [0, 1]
    assert record["steps"] == 20
