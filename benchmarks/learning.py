"""Learning benchmark: MISA, its ablations and BC/CQL/IQL/TD3+BC on the same data.

Every job is one run of the reference script's loop: ``misa_offline.py`` for
MISA and its ablations, ``baselines.py +algorithm=<method>`` for the
baselines; same networks, data, step budget, evaluation and seeds for every
method. Results are appended to ``benchmarks/results/learning_<scale>.csv``
(one row per seed); jobs already there are skipped, so an interrupted
benchmark resumes where it stopped. ``--shard i/n`` runs every n-th job for a
cluster.

With ``--agents`` a method's seeds on a dataset are one job: one process
trains them side by side (``num_agents=<number of seeds>``, seeds
``s, s + 1, ...``), each agent with its own initialisation, batches and random
draws, and writes one row per seed (``wall_s``: the run's training time, over
all its processes when it was resumed, divided by its agents).

    python benchmarks/learning.py --scale small            # 2-core CPU
    python benchmarks/learning.py --scale small --agents   # each method's seeds in one process
    python benchmarks/learning.py --scale long --methods misa cql
    python benchmarks/learning.py --scale paper --shard 0/8
    python benchmarks/learning.py --scale mujoco --agents --jobs 30 \\
        --launcher submitit_slurm --launcher-args hydra.launcher.partition=gpu
    python benchmarks/learning.py --scale small --methods misa --seeds 3 4   # more seeds
    python benchmarks/report.py                             # tables and curves
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sota-implementations" / "misa" / "misa_offline.py"
BASELINE_SCRIPT = REPO / "benchmarks" / "baselines.py"
RESULTS = REPO / "benchmarks" / "results"
FIELDS = [
    "scale",
    "dataset",
    "method",
    "seed",
    "steps",
    "final_score",
    "best_score",
    "last_mean_score",
    "dataset_score",
    "wall_s",
    "run_dir",
]

# The order the jobs run in: the cheapest first, so a run cut short has finished the most.
BASELINES = ("bc", "iql", "td3bc", "cql")
# Table 1's ablations as overrides of the script's `loss` options.
ABLATIONS = {
    "misa-ba": ["loss.mi_estimator=ba"],
    "misa-f": ["loss.mi_estimator=f"],
    "misa-dv": ["loss.mi_estimator=dv"],
    "misa-biased": ["loss.unbiased_correction=false"],
    "misa-no-ba": ["loss.bc_term=false"],
    "misa-k5": ["loss.num_mcmc_samples=5"],
    "misa-authors-sampler": ["loss.sampler_mode=authors"],
    # the recipe's networks before they took the authors' initialisation
    "misa-torch-init": ["network.init=torch", "network.trainable_log_std=false"],
    # alpha's learning rate ten times the authors' 1e-4, at which alpha falls
    # only from 1 to about 0.6 in 5k updates: is the entropy weight what holds
    # MISA back at small budgets?
    "misa-alpha-lr-1e-3": ["optim.alpha_lr=1e-3"],
    # the temperature held at about where MISA peaks on the D4RL-sized Walker2d
    # medium-replay set (alpha 0.09 to 0.06 at 25k-30k updates) before it falls
    # to 5e-5: does the falling temperature cause MISA's fall there?
    "misa-fixed-alpha-0.1": ["loss.fixed_alpha=true", "loss.alpha_init=0.1"],
}
DEMO = "datasets/pendulum-medium-replay-v0.hdf5"

# How each generated dataset is made (datasets/extra/ is not in the repo).
# The MuJoCo sets come from 60k-step SAC runs (a fifth of D4RL's behaviour
# training; "expert" is that agent): the budget of one core for an hour or so.
_GENERATE_SAC = (
    "--train-steps 60000 --init-random-steps 5000 --frames-per-batch 1000 "
    "--eval-every 2500 --checkpoint-every 10000 --final-eval-episodes 10 "
    "--random-episodes 20 --out datasets/extra --threads 1"
)
CHEETAH_MR = "datasets/extra/halfcheetah-medium-replay-v0.hdf5"
HOPPER_M = "datasets/extra/hopper-medium-v0.hdf5"
HOPPER_MR = "datasets/extra/hopper-medium-replay-v0.hdf5"
WALKER_M = "datasets/extra/walker2d-medium-v0.hdf5"
WALKER_MR = "datasets/extra/walker2d-medium-replay-v0.hdf5"
GENERATE = {
    CHEETAH_MR: "python tools/generate_dataset.py --env HalfCheetah-v5 "
    f"--recipes medium-replay {_GENERATE_SAC}",
    # one SAC run makes both sets of a task
    **{
        path: f"python tools/generate_dataset.py --env {env} "
        f"--recipes medium medium-replay {_GENERATE_SAC}"
        for env, paths in (
            ("Hopper-v5", (HOPPER_M, HOPPER_MR)),
            ("Walker2d-v5", (WALKER_M, WALKER_MR)),
        )
        for path in paths
    },
}
# D4RL-sized sets, made as D4RL made its own: `medium-replay` is the whole
# replay buffer of a SAC run stopped at D4RL's medium level, `medium` 100k+
# steps of the policy it stopped at; normalised with D4RL's reference returns.
D4RL_SIZED = {
    (task, recipe): f"datasets/extra/d4rl/{task}-{recipe}-v0.hdf5"
    for task in ("hopper", "walker2d")
    for recipe in ("medium-replay", "medium")
}
_GENERATE_D4RL = (
    "--recipes medium medium-replay --init-random-steps 5000 --frames-per-batch 1000 "
    "--eval-every 2500 --checkpoint-every 5000 --out datasets/extra/d4rl --threads 1"
)
GENERATE.update(
    {
        path: f"python tools/generate_dataset.py --env {env} {stop} {_GENERATE_D4RL}"
        for (task, _), path in D4RL_SIZED.items()
        for env, stop in (
            (
                (
                    "Hopper-v5",
                    "--stop-at-return 1400 --reference-returns -20.272305 3234.3 "
                    "--train-steps 600000",
                )
                if task == "hopper"
                else (
                    "Walker2d-v5",
                    "--stop-at-return 2800 --reference-returns 1.629008 4592.3 "
                    "--train-steps 800000",
                )
            ),
        )
    }
)
# MuJoCo evaluations run the tasks' whole 1000-step episodes (the demo preset
# stops at Pendulum's 200).
MUJOCO_EVAL = ["logger.eval_steps=1000"]

# Settings shared by every method at each scale (the report prints them).
SCALES = {
    # The shipped dataset. Its HalfCheetah medium-replay rows (15000 steps)
    # were made on a file that is lost: they are kept, apart, in
    # learning_small_cheetah_lost.csv, and the mujoco scale runs HalfCheetah.
    "small": {
        "datasets": [DEMO],
        "ablation_datasets": [DEMO],
        "seeds": [0, 1, 2],
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=4000",
            "logger.eval_iter=500",
        ],
    },
    # Where the paper claims MISA's advantage (Hopper and Walker2d, medium and
    # medium-replay) and HalfCheetah medium-replay, 5 seeds, demo-size
    # networks. One budget for every method and dataset, the largest the
    # 2-core CPU fits: with each method's seeds in one process (--agents), a
    # 5-agent MISA or CQL group takes 45-50 minutes per dataset on one core at
    # 5k updates, about 8 of them evaluating (50 episodes of up to 1000 steps).
    "mujoco": {
        "datasets": [HOPPER_MR, HOPPER_M, WALKER_MR, WALKER_M, CHEETAH_MR],
        # the parity row "our code with the authors' sampler" (benchmarks/parity/)
        # and two probes of what holds the policy's entropy up: alpha's
        # learning rate and the likelihood term of the data's actions
        "ablation_datasets": [HOPPER_MR],
        "ablations": ["misa-authors-sampler", "misa-alpha-lr-1e-3", "misa-no-ba"],
        # the second probe on a second mostly random set
        "dataset_ablations": {WALKER_MR: ["misa-no-ba"]},
        "seeds": [0, 1, 2, 3, 4],
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=5000",
            "logger.eval_iter=500",
            *MUJOCO_EVAL,
        ],
    },
    # The small scale's shipped dataset with four times the step budget: are
    # the methods' orderings at 4000 steps those of trained policies?
    "long": {
        "datasets": [DEMO],
        "ablation_datasets": [],
        "seeds": [0, 1, 2],
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=16000",
            "logger.eval_iter=1000",
        ],
    },
    # The D4RL-sized sets at 100k updates, demo-size networks, each method's
    # 5 seeds one compiled group (--agents), an evaluation every 5000 updates.
    "d4rl": {
        "datasets": list(D4RL_SIZED.values()),
        "ablation_datasets": [],
        # after the main methods: the temperature probe where MISA falls
        "dataset_ablations": {
            D4RL_SIZED["walker2d", "medium-replay"]: ["misa-fixed-alpha-0.1"]
        },
        "seeds": [0, 1, 2, 3, 4],
        "overrides": [
            "preset=demo",
            "optim.gradient_steps=100000",
            "logger.eval_iter=5000",
            "checkpoint.interval=5000",
            "compile.compile=true",
            *MUJOCO_EVAL,
        ],
    },
    "paper": {
        "datasets": [
            f"datasets/extra/{task}-{recipe}-v0.hdf5"
            for task in ("halfcheetah", "hopper", "walker2d")
            for recipe in ("medium", "medium-replay", "medium-expert")
        ],
        "ablation_datasets": [],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": ["preset=locomotion", "optim.gradient_steps=1000000"],
    },
}


def generate_command(dataset: str) -> str:
    """The generator command that makes ``dataset`` (a D4RL-layout .hdf5 path)."""
    if dataset in GENERATE:
        return GENERATE[dataset]
    from torchrl_misa.data import dataset_env_id

    stem = Path(dataset).stem  # e.g. hopper-medium-expert-v0
    recipe = stem.rsplit("-v", 1)[0].split("-", 1)[1]
    env = dataset_env_id(stem)
    return (
        f"python tools/generate_dataset.py --env {env} --recipes {recipe} "
        f"--train-steps 300000 --out {Path(dataset).parent}"
    )


@dataclass(frozen=True)
class Job:
    """One process: ``method`` on ``dataset`` at seeds ``seed, ..., seed + num_agents - 1``."""

    scale: str
    dataset: str
    method: str
    seed: int
    num_agents: int = 1

    @property
    def name(self) -> str:
        seeds = f"seed{self.seed}"
        if self.num_agents > 1:
            seeds = f"seeds{self.seed}-{self.seed + self.num_agents - 1}"
        return f"{Path(self.dataset).stem}__{self.method}__{seeds}"

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.num_agents))

    @property
    def script(self) -> Path:
        return BASELINE_SCRIPT if self.method in BASELINES else SCRIPT

    def overrides(self) -> list[str]:
        base = SCALES[self.scale]["overrides"]
        algo = [f"+algorithm={self.method}"] if self.method in BASELINES else []
        return [
            *base,
            f"replay_buffer.dataset={self.dataset}",
            *algo,
            f"env.seed={self.seed}",
            f"num_agents={self.num_agents}",
            *ABLATIONS.get(self.method, []),
        ]


def group_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs of one method and dataset at consecutive seeds merged into one group job."""
    out, runs = [], {}
    for job in jobs:
        key = (job.scale, job.dataset, job.method)
        if key not in runs:
            runs[key] = []
            out.append(key)
        runs[key].append(job.seed)
    grouped = []
    for item in out:
        seeds = sorted(set(runs[item]))
        start = seeds[0]
        for prev, seed in zip(seeds, seeds[1:] + [None]):
            if seed != prev + 1:  # a gap in the seeds ends a group
                grouped.append(Job(*item, start, prev - start + 1))
                start = seed
    return grouped


def jobs_for(scale: str, seeds: list[int] | None = None) -> list[Job]:
    """Main methods first (all seeds), then the ablations, seed by seed.

    ``seeds`` replaces the scale's own seeds (e.g. to add seeds to a finished scale).
    """
    spec = SCALES[scale]
    seeds = spec["seeds"] if seeds is None else seeds
    jobs = [
        Job(scale, d, m, s)
        for s in seeds
        for d in spec["datasets"]
        for m in ("misa", *BASELINES)
    ]
    jobs += [
        Job(scale, d, m, s)
        for s in seeds
        for d in spec["ablation_datasets"]
        for m in spec.get("ablations", ABLATIONS)
    ]
    jobs += [
        Job(scale, d, m, s)
        for s in seeds
        for d, methods in spec.get("dataset_ablations", {}).items()
        for m in methods
    ]
    return jobs


def done_jobs(path: Path) -> set[str]:
    """Names of the finished jobs (single seeds ``<dataset>__<method>__seed<s>``, too,
    for each seed a finished group job covered)."""
    if not path.exists():
        return set()
    done = set()
    with path.open() as f:
        for row in csv.DictReader(f):
            done.add(Path(row["run_dir"]).name)
            done.add(f"{row['dataset']}__{row['method']}__seed{row['seed']}")
    return done


def same_score(a: str | float, b: str | float) -> bool:
    """Whether two dataset averages, as the csv rounds them, are one file's (nan too)."""
    a, b = float(a), float(b)
    return (a != a and b != b) or abs(a - b) <= 1.5e-3


def check_dataset_files(datasets: list[str], out_csv: Path) -> None:
    """Refuses to add rows from a different file of a dataset already in ``out_csv``.

    A regenerated set keeps its name but not its transitions, and rows of two
    files in one table would compare methods on different data. Every row
    records the average normalised score of its dataset, which tells two files
    apart.
    """
    recorded = {}
    if out_csv.exists():
        with out_csv.open() as f:
            for row in csv.DictReader(f):
                recorded.setdefault(row["dataset"], row["dataset_score"])
    from torchrl_misa.data import dataset_average_normalized_score

    for dataset in datasets:
        stem = Path(dataset).stem
        if stem not in recorded:
            continue
        score = dataset_average_normalized_score(str(REPO / dataset))
        if not same_score(score, recorded[stem]):
            raise SystemExit(
                f"{dataset} is not the file the {stem} rows of {out_csv} were made "
                f"on: its dataset average is {score:.3f}, theirs "
                f"{float(recorded[stem]):.3f}. Rows of two files would compare "
                "methods on different data. Bring back the old file, or move the "
                f"{stem} rows to another csv (or pass --out) to start afresh "
                "(benchmarks/results/datasets.md records how each file was made)."
            )
    check_fingerprints(datasets, out_csv.with_suffix(".datasets.json"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fingerprints(datasets: list[str], record: Path) -> None:
    """Pins each dataset file's sha256 in ``record`` the first time; refuses another file later.

    Runs take hours before their first row: the fingerprint is written before
    any of them starts, so a file regenerated in between is caught too.
    """
    with open(record.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmarks may start together
        _check_fingerprints(datasets, record)


def _check_fingerprints(datasets: list[str], record: Path) -> None:
    pinned = json.loads(record.read_text()) if record.exists() else {}
    changed = False
    for dataset in datasets:
        stem = Path(dataset).stem
        sha = file_sha256(REPO / dataset)
        if stem not in pinned:
            pinned[stem] = sha
            changed = True
        elif pinned[stem] != sha:
            raise SystemExit(
                f"{dataset} is not the file the {stem} runs of this benchmark started "
                f"on (sha256 {sha[:12]}..., pinned {pinned[stem][:12]}... in {record}). "
                "Bring back the old file, or pass --out to start a new table (and "
                "remove the entry from the record only if its rows are gone too)."
            )
    if changed:
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, record)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def run_dir_of(job: Job, out_csv: Path) -> Path:
    """``runs/<scale>/<job>`` for the scale's own csv, ``runs/<csv stem>/<job>`` for another.

    Two csvs never share a run folder: a folder holding another run's
    checkpoint would be continued (or refused), not trained afresh.
    """
    own = out_csv.resolve() == (RESULTS / f"learning_{job.scale}.csv").resolve()
    return RESULTS / "runs" / (job.scale if own else out_csv.stem) / job.name


def job_command(
    job: Job, run_dir: Path, launcher: str | None = None, launcher_args=()
) -> list[str]:
    """The script's command for ``job``, run here or sent through a hydra launcher.

    With ``launcher`` (e.g. ``submitit_slurm``) the job is a one-job hydra
    multirun whose output folder is ``run_dir``: the command waits for the
    job, and a requeued job continues its checkpoint there.
    """
    where = [f"hydra.run.dir={run_dir}"]
    if launcher:
        where = [
            "--multirun",
            f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={run_dir}",
            "hydra.sweep.subdir=.",
            *launcher_args,
        ]
    return [
        sys.executable,
        str(job.script),
        *where,
        *job.overrides(),
        "logger.progress_bar=false",
    ]


def run_job(
    job: Job, out_csv: Path, threads: int, launcher=None, launcher_args=()
) -> list[dict]:
    """Runs ``job``; appends and returns one row per seed."""
    run_dir = run_dir_of(job, out_csv)
    cmd = job_command(job, run_dir, launcher, launcher_args)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd.append(f"optim.num_threads={threads}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{job.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [
        {
            "scale": job.scale,
            "dataset": Path(job.dataset).stem,
            "method": job.method,
            "seed": agent["seed"],
            "steps": summary["steps"],
            "final_score": round(agent["final_score"], 3),
            "best_score": round(agent["best_score"], 3),
            "last_mean_score": round(agent["last_mean_score"], 3),
            "dataset_score": round(summary["dataset_score"], 3),
            # the run's own count covers the processes of earlier sessions
            "wall_s": round(summary.get("train_s", wall) / job.num_agents, 1),
            "run_dir": _relative(run_dir),
        }
        for agent in summary["agents"]
    ]
    if [row["seed"] for row in rows] != job.seeds:
        raise RuntimeError(
            f"{job.name}: the run reported seeds {rows}, not {job.seeds}"
        )
    # jobs side by side, in this process's threads or in others, append to one
    # file: each opens the lock file itself, and flock serialises the opens
    with open(out_csv.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = not out_csv.exists()
        with out_csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)  # one write: a kill leaves whole rows or none
            f.flush()
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job from i")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument(
        "--seeds", nargs="*", type=int, help="these seeds instead of the scale's"
    )
    parser.add_argument(
        "--datasets", nargs="*", help="only these datasets (file stems or paths)"
    )
    parser.add_argument(
        "--agents",
        action="store_true",
        help="train each method's seeds on a dataset in one process (num_agents)",
    )
    parser.add_argument(
        "--launcher",
        help="hydra launcher for every job (submitit_local, submitit_slurm); "
        "--jobs of them wait side by side",
    )
    parser.add_argument(
        "--launcher-args",
        nargs="*",
        default=[],
        help="its settings, e.g. hydra.launcher.partition=gpu "
        "hydra.launcher.timeout_min=720 hydra.launcher.gpus_per_node=1",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the jobs")
    parser.add_argument("--out", type=Path, help="results csv")
    args = parser.parse_args(argv)

    index, count = (int(x) for x in args.shard.split("/"))
    out_csv = args.out or RESULTS / f"learning_{args.scale}.csv"
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    finished = done_jobs(out_csv)
    todo = [
        j
        for k, j in enumerate(jobs_for(args.scale, args.seeds))
        if k % count == index
        and j.name not in finished
        and (not args.methods or j.method in args.methods)
        and (
            not args.datasets
            or j.dataset in args.datasets
            or Path(j.dataset).stem in args.datasets
        )
    ]
    if args.agents:
        todo = group_jobs(todo)
    missing = sorted({j.dataset for j in todo if not (REPO / j.dataset).exists()})
    if missing:
        raise SystemExit(
            "Missing datasets. Make them with the generator (or leave their jobs "
            "out with --datasets):\n"
            + "\n".join(f"  {d}: {generate_command(d)}" for d in missing)
        )
    check_dataset_files(sorted({j.dataset for j in todo}), out_csv)
    print(f"{len(todo)} jobs to run ({len(finished)} already in {out_csv})")
    if args.dry_run:
        for job in todo:
            print(job.name, " ".join(job.overrides()))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(
                run_job, j, out_csv, args.threads, args.launcher, args.launcher_args
            )
            for j in todo
        ]
        for k, fut in enumerate(futures, 1):
            for row in fut.result():
                print(
                    f"[{k}/{len(todo)}] {row['dataset']} {row['method']} seed "
                    f"{row['seed']}: final {row['final_score']:.1f}, best "
                    f"{row['best_score']:.1f} ({row['wall_s']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
