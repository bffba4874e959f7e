"""Updates/s of the reference script with 1 and 2 CPU threads, quiet and beside busy processes.

Each row runs ``misa_offline.py`` (``optim.num_threads=T``) for ``--seconds``
of training after its warm-up, alone ("quiet") or beside ``--busy``
single-thread processes that spin on the CPU (what a second job, a browser or
a test run does to a laptop). Speed: the script's own ``time/updates_per_s``
log, over the intervals after the first (which holds the compile or the
first evaluation's set-up).

    python benchmarks/threads.py                       # demo, compiled and eager, and a 5-agent group
    python benchmarks/threads.py --jobs demo --busy 3

Writes ``benchmarks/results/threads.{md,json}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sota-implementations" / "misa" / "misa_offline.py"
RESULTS = REPO / "benchmarks" / "results"
COMMON = [
    "preset=demo",
    "optim.gradient_steps=1000000",
    "logger.eval_iter=1000000",  # no evaluation inside the window
    "logger.log_interval=10",
    "logger.backend=csv",
    "logger.progress_bar=false",
    "checkpoint.interval=1000000",
]
# the demo as `make demo` runs it, the same update eager, and a learning
# benchmark job (one method's five seeds as one group, eager as the benchmark runs)
JOBS = {
    "demo": ["compile.compile=true"],
    "demo-eager": [],
    "group5": ["num_agents=5"],
}
SPIN = "while True: pass"


def updates_per_s(run_dir: Path) -> list[float]:
    """The script's ``time/updates_per_s`` log, first interval dropped."""
    files = list(run_dir.glob("**/scalars/time/updates_per_s.csv"))
    if not files:
        return []
    with files[0].open() as f:
        return [float(value) for _, value in csv.reader(f)][1:]


def measure(job: str, threads: int, busy: int, seconds: float, warmup: float) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cmd = [
                sys.executable,
                str(SCRIPT),
                *COMMON,
                *JOBS[job],
                f"optim.num_threads={threads}",
                f"hydra.run.dir={run_dir}",
            ]
            proc = subprocess.Popen(
                cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            # wait for the first logged interval (start-up, compile), then measure
            deadline = time.time() + warmup
            while not updates_per_s(run_dir) and time.time() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode()[-3000:])
                time.sleep(0.5)
            time.sleep(seconds)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            speeds = updates_per_s(run_dir)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    speeds.sort()
    median = speeds[len(speeds) // 2] if speeds else float("nan")
    return {
        "job": job,
        "threads": threads,
        "busy": busy,
        "updates_per_s": median,
        "intervals": len(speeds),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", choices=sorted(JOBS), default=list(JOBS))
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--busy", type=int, default=1, help="spinning processes")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument(
        "--warmup", type=float, default=240.0, help="longest wait for a first log"
    )
    parser.add_argument("--tag", default="threads")
    args = parser.parse_args(argv)

    rows = []
    for job in args.jobs:
        for busy in (0, args.busy):
            for threads in args.threads:
                row = measure(job, threads, busy, args.seconds, args.warmup)
                rows.append(row)
                print(
                    f"{job:10s} threads={threads} busy={busy}: "
                    f"{row['updates_per_s']:.1f} updates/s ({row['intervals']} intervals)",
                    flush=True,
                )
    record = {
        "rows": rows,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "seconds": args.seconds,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"Updates/s of `misa_offline.py preset=demo` on {record['cpus']} CPUs "
        f"({record['date']}), median over the {args.seconds:.0f} s after the first "
        f"logged interval; busy: {args.busy} spinning single-thread process(es) "
        "beside the run. `python benchmarks/threads.py`",
        "",
        "| job | threads | quiet | busy |",
        "|---|---:|---:|---:|",
    ]
    for job in args.jobs:
        for threads in args.threads:
            quiet, busy = (
                next(
                    r["updates_per_s"]
                    for r in rows
                    if r["job"] == job and r["threads"] == threads and r["busy"] == b
                )
                for b in (0, args.busy)
            )
            lines.append(f"| {job} | {threads} | {quiet:.1f} | {busy:.1f} |")
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
