"""Online fine-tuning benchmark: offline pretraining, then the same online frames for every row.

MISA, CQL and IQL are pretrained offline on a dataset and fine-tuned online
through the reference script's loop (``online.frames``: TorchRL's collector,
half of every batch from the dataset); SAC trains from scratch on the same
online frames (``optim.gradient_steps=0 online.offline_fraction=0``), the
control that says whether pretraining helps. One process per method and seed,
the compiled update, one thread. Rows go to ``benchmarks/results/online.csv``
and each run's curve to ``online_curves.json``; finished jobs are skipped, so an
interrupted benchmark resumes where it stopped (a job killed halfway continues
from its last checkpoint).

    python benchmarks/online.py                                  # shipped Pendulum set
    python benchmarks/online.py --datasets hopper-medium-replay-v0 --seeds 0 1 2
    python benchmarks/online.py --seeds 3 4 &                  # a second process, other seeds
    python benchmarks/online.py --report                         # online.md, online.png
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCRIPTS = {
    "misa": REPO / "sota-implementations" / "misa" / "misa_offline.py",
    "baseline": REPO / "benchmarks" / "baselines.py",
}
METHODS = {
    "misa": [],
    "cql": ["+algorithm=cql"],
    "iql": ["+algorithm=iql"],
    "sac-scratch": [
        "+algorithm=sac",
        "optim.gradient_steps=0",
        "online.offline_fraction=0",
    ],
}
COMMON = [
    "compile.compile=true",
    "online.frames_per_batch=1000",
    "online.utd=1",
    "logger.progress_bar=false",
    "optim.num_threads=1",
]
# Per dataset: the file, the offline budget, the online frames, the evaluation.
DATASETS = {
    "pendulum-medium-replay-v0": {
        "path": "datasets/pendulum-medium-replay-v0.hdf5",
        "offline_steps": 4000,
        "online_frames": 10000,
        "overrides": [
            "preset=demo",
            "logger.eval_iter=500",
            "checkpoint.interval=2000",
        ],
    },
    "hopper-medium-replay-v0": {
        # made by `python benchmarks/learning.py`'s generator command (see
        # benchmarks/results/datasets.md): not in the repo
        "path": "datasets/extra/hopper-medium-replay-v0.hdf5",
        "offline_steps": 5000,
        "online_frames": 10000,
        "overrides": [
            "preset=demo",
            "logger.eval_iter=1000",
            "logger.eval_steps=1000",
            "logger.eval_envs=5",
            "checkpoint.interval=2500",
        ],
    },
}
FIELDS = [
    "dataset",
    "method",
    "seed",
    "offline_steps",
    "online_frames",
    "pretrained_score",
    "dip_score",
    "final_score",
    "best_score",
    "last_mean_score",
    "dataset_score",
    "wall_s",
    "run_dir",
]
DIP_WINDOW = 0.25  # the dip: the lowest score over the first quarter of the frames


def job_name(dataset: str, method: str, seed: int) -> str:
    return f"{dataset}__{method}__seed{seed}"


def command(dataset: str, method: str, seed: int, run_dir: Path) -> list[str]:
    spec = DATASETS[dataset]
    script = SCRIPTS["misa" if method == "misa" else "baseline"]
    return [
        sys.executable,
        str(script),
        f"hydra.run.dir={run_dir}",
        *spec["overrides"],
        f"replay_buffer.dataset={spec['path']}",
        f"optim.gradient_steps={spec['offline_steps']}",
        f"online.frames={spec['online_frames']}",
        f"env.seed={seed}",
        *COMMON,
        *METHODS[method],  # after the budget: SAC from scratch has no offline steps
    ]


def curve(summary: dict) -> list[tuple[float, float]]:
    """``(online frames, score)`` of each evaluation; the pretrained score at frame 0."""
    switch = summary["steps"] - summary["online_frames"]  # utd = 1
    return [
        (step - switch, score) for step, score in summary["scores"] if step >= switch
    ]


def row_of(dataset, method, seed, summary, wall, run_dir) -> dict:
    points = curve(summary)
    frames = summary["online_frames"]
    early = [s for f, s in points if 0 < f <= DIP_WINDOW * frames]
    pretrained = summary.get("pretrained_score", float("nan"))
    return {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "offline_steps": summary["steps"] - frames,
        "online_frames": frames,
        "pretrained_score": round(pretrained, 3),
        "dip_score": round(min(early), 3) if early else float("nan"),
        "final_score": round(summary["final_score"], 3),
        "best_score": round(summary["best_score"], 3),
        "last_mean_score": round(summary["last_mean_score"], 3),
        "dataset_score": round(summary["dataset_score"], 3),
        "wall_s": round(wall, 1),
        "run_dir": str(run_dir.relative_to(REPO)),
    }


def done_jobs(csv_path: Path) -> set[str]:
    if not csv_path.exists():
        return set()
    with csv_path.open() as f:
        return {
            job_name(r["dataset"], r["method"], int(r["seed"]))
            for r in csv.DictReader(f)
        }


def run(datasets, methods, seeds, out: Path) -> None:
    curves_path = out.with_name(out.stem + "_curves.json")
    done = done_jobs(out)
    # seed-major: a partial run covers every method at the first seeds
    jobs = [(d, m, s) for s in seeds for d in datasets for m in methods]
    missing = [DATASETS[d]["path"] for d in datasets]
    missing = [path for path in missing if not (REPO / path).exists()]
    if missing:
        from learning import generate_command

        raise SystemExit(
            "Missing datasets. Make them with the generator, then rerun:\n"
            + "\n".join(f"  {path}: {generate_command(path)}" for path in missing)
        )
    from learning import check_dataset_files

    # rows of two files of one dataset would compare methods on different data
    check_dataset_files([DATASETS[d]["path"] for d in datasets], out)
    todo = [j for j in jobs if job_name(*j) not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs done; running {len(todo)}.")
    for i, (dataset, method, seed) in enumerate(todo, 1):
        name = job_name(dataset, method, seed)
        run_dir = RESULTS / "runs" / "online" / name
        print(f"[{i}/{len(todo)}] {name} ...", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            command(dataset, method, seed, run_dir),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(
                f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        summary = json.loads((run_dir / "summary.json").read_text())
        row = row_of(dataset, method, seed, summary, wall, run_dir)
        _record(out, curves_path, row, name, curve(summary))
        print(
            f"    pretrained {row['pretrained_score']}, dip {row['dip_score']}, "
            f"final {row['final_score']} ({wall / 60:.1f} min)",
            flush=True,
        )


def _record(out: Path, curves_path: Path, row: dict, name: str, points) -> None:
    """Adds a job's row and curve; processes run side by side (other seeds) take turns."""
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        curves = json.loads(curves_path.read_text()) if curves_path.exists() else {}
        curves[name] = points
        tmp = curves_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(curves, indent=0))
        os.replace(tmp, curves_path)
        new = not out.exists()
        with out.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def _name(row: dict) -> str:
    return job_name(row["dataset"], row["method"], int(row["seed"]))


def _mean_std(values) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def report(out: Path) -> None:
    """``online.md`` (a table per dataset) and ``online.png`` (mean curves)."""
    with out.open() as f:
        rows = list(csv.DictReader(f))
    curves = json.loads(out.with_name(out.stem + "_curves.json").read_text())
    lines = [
        "# Online fine-tuning",
        "",
        "Command: `python benchmarks/online.py` (then `--report`). Mean ± std over "
        "seeds of the normalised score: after the offline updates (pretrained), "
        f"lowest in the first {DIP_WINDOW:.0%} of the online frames (dip), mean of "
        "every evaluation of the online phase (online mean: how early a method "
        "gets there), at the end, best, mean of the last 5 evaluations. SAC "
        "trains from scratch on the online frames only. Minutes: one process on "
        "a 2-core CPU shared with another job.",
        "",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for dataset in datasets:
        sub = [r for r in rows if r["dataset"] == dataset]
        first = sub[0]
        lines += [
            f"## {dataset}",
            "",
            f"{first['offline_steps']} offline updates (0 for SAC), then "
            f"{first['online_frames']} online frames at one update per frame; "
            f"dataset average {float(first['dataset_score']):.1f}.",
            "",
            "| method | seeds | pretrained | dip | online mean | final | best | "
            "last 5 | minutes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in sub):
            mr = [r for r in sub if r["method"] == method]

            def col(key, mr=mr):
                return _mean_std([float(r[key]) for r in mr])

            minutes = np.mean([float(r["wall_s"]) for r in mr]) / 60
            online_mean = _mean_std(
                [np.mean([s for f, s in curves[_name(r)] if f > 0]) for r in mr]
            )
            lines.append(
                f"| {method} | {len(mr)} | {col('pretrained_score')} | "
                f"{col('dip_score')} | {online_mean} | {col('final_score')} | "
                f"{col('best_score')} | {col('last_mean_score')} | {minutes:.1f} |"
            )
        lines.append("")
    (out.with_suffix(".md")).write_text("\n".join(lines))
    _plot(rows, curves, datasets, out.with_suffix(".png"))
    print("\n".join(lines))


def _plot(rows, curves, datasets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4))
    axes = np.atleast_1d(axes)
    for ax, dataset in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == dataset]
        for method in dict.fromkeys(r["method"] for r in sub):
            runs = [
                curves[job_name(dataset, method, int(r["seed"]))]
                for r in sub
                if r["method"] == method
            ]
            frames = [f for f, _ in runs[0]]
            scores = np.array([[s for _, s in run] for run in runs])
            mean, std = scores.mean(0), scores.std(0)
            ax.plot(frames, mean, label=f"{method} ({len(runs)} seeds)")
            ax.fill_between(frames, mean - std, mean + std, alpha=0.2)
        ax.set_title(dataset)
        ax.set_xlabel("online frames")
        ax.set_ylabel("normalised score")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["pendulum-medium-replay-v0"], choices=DATASETS
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=RESULTS / "online.csv")
    parser.add_argument("--report", action="store_true", help="tables and plot only")
    args = parser.parse_args(argv)
    if args.report:
        report(args.out)
        return
    run(args.datasets, args.methods, args.seeds, args.out)


if __name__ == "__main__":
    main()
