"""Turns the learning benchmark's csv into a markdown report and PNG learning curves.

    python benchmarks/report.py --scale small

Reads ``benchmarks/results/learning_<scale>.csv`` (one row per run, written by
``benchmarks/learning.py``), the runs' ``summary.json`` (evaluation curves) and
csv logs (update speed), and ``benchmarks/results/bench_update.json`` (the
update-step throughput benchmark) when present. Writes
``benchmarks/results/learning_<scale>.md`` and ``learning_<scale>_*.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MAIN = ("misa", "bc", "cql", "iql", "td3bc")


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def mean_std(values) -> str:
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f} (n={len(values)})"


def score_table(rows: list[dict], methods, metric: str) -> list[str]:
    """Markdown rows: dataset x method, mean ± std over seeds, plus the total."""
    by = defaultdict(list)
    for r in rows:
        by[r["dataset"], r["method"]].append(float(r[metric]))
    datasets = sorted({r["dataset"] for r in rows})
    methods = [m for m in methods if any((d, m) in by for d in datasets)]
    lines = [
        "| dataset | dataset average | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for d in datasets:
        data_score = next(float(r["dataset_score"]) for r in rows if r["dataset"] == d)
        cells = [mean_std(by[d, m]) if (d, m) in by else "" for m in methods]
        lines.append(f"| {d} | {data_score:.1f} | " + " | ".join(cells) + " |")
    if len(datasets) > 1:
        totals = []
        for m in methods:
            if all((d, m) in by for d in datasets):
                totals.append(f"{sum(np.mean(by[d, m]) for d in datasets):.1f}")
            else:
                totals.append("")
        lines.append("| **total** | | " + " | ".join(totals) + " |")
    return lines


def settings_line(rows: list[dict]) -> str:
    """The shared settings, read from the runs' own resolved hydra configs."""
    import yaml

    seen, mcmc = defaultdict(set), set()
    for r in rows:
        path = REPO / r["run_dir"] / ".hydra" / "config.yaml"
        if not path.exists():
            continue
        cfg = yaml.safe_load(path.read_text())
        net, optim, ev = cfg["network"], cfg["optim"], cfg["eval"]
        seen[r["dataset"]].add(
            f"actor {net['actor_hidden_sizes']}, critic {net['critic_hidden_sizes']}, "
            f"batch {optim['batch_size']}, {optim['gradient_steps']} gradient steps, "
            f"evaluation every {ev['interval']} steps ({ev['episodes']} episodes)"
        )
        if r["method"] == "misa":
            loss = cfg["loss"]
            mcmc.add(
                f"k={loss['num_mcmc_samples']}, {loss['num_burnin']} burn-in, "
                f"{loss['num_leapfrog']} leapfrog steps, {loss['sampler_mode']} sampler"
            )
    if not seen:
        return ""
    line = (
        "Settings of every run: "
        + "; ".join(f"{d}: {' / '.join(sorted(v))}" for d, v in sorted(seen.items()))
        + "."
    )
    if mcmc:
        line += " MISA: " + "; ".join(sorted(mcmc)) + "."
    return line


def run_speed(run_dir: Path) -> float | None:
    """Median logged updates/s of a run (its csv logger's train/updates_per_s)."""
    files = list(run_dir.glob("*/scalars/train/updates_per_s.csv"))
    if not files:
        return None
    values = [float(line.split(",")[1]) for line in files[0].read_text().splitlines()]
    return float(np.median(values[1:] or values))  # the first window holds warm-up


def plot_curves(rows: list[dict], methods, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = defaultdict(list)
    for r in rows:
        if r["method"] not in methods:
            continue
        summary = REPO / r["run_dir"] / "summary.json"
        if summary.exists():
            scores = json.loads(summary.read_text())["scores"]
            curves[r["dataset"], r["method"]].append(np.asarray(scores, float))
    datasets = sorted({d for d, _ in curves})
    if not datasets:
        return False
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False
    )
    for ax, d in zip(axes[0], datasets):
        for m in methods:
            runs = curves.get((d, m))
            if not runs:
                continue
            n = min(len(c) for c in runs)
            steps = runs[0][:n, 0]
            values = np.stack([c[:n, 1] for c in runs])
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, label=f"{m} ({len(runs)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        data_score = next(float(r["dataset_score"]) for r in rows if r["dataset"] == d)
        ax.axhline(data_score, color="k", ls="--", lw=1, label="dataset average")
        ax.set(
            title=f"{title}: {d}", xlabel="gradient steps", ylabel="normalised score"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def throughput_lines(rows: list[dict]) -> list[str]:
    lines = []
    bench = RESULTS / "bench_update.json"
    if bench.exists():
        payload = json.loads(bench.read_text())
        meta = payload["meta"]
        lines += [
            f"Update step at the paper's settings (`{meta['command']}`; device "
            f"{meta['device']}, {meta['threads']} threads, batch {meta['batch']}, "
            f"{meta['hidden']}-{meta['hidden']} networks, k={meta['k']}):",
            "",
            "| configuration | updates/s | ms/step |",
            "|---|---:|---:|",
        ]
        for name, res in payload["results"].items():
            lines.append(
                f"| {name} | {res['updates_per_s']:.2f} | {res['median_step_ms']:.1f} |"
            )
        lines.append("")
    speeds = defaultdict(list)
    for r in rows:
        s = run_speed(REPO / r["run_dir"])
        if s is not None:
            speeds[r["method"]].append(s)
    if speeds:
        lines += [
            "Training speed inside the learning runs above (median logged updates/s, "
            "demo-size networks, runs sharing the 2-core CPU with other jobs, so only rough "
            "ratios between methods mean anything):",
            "",
            "| method | updates/s |",
            "|---|---:|",
        ]
        lines += [f"| {m} | {np.median(v):.1f} |" for m, v in sorted(speeds.items())]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small")
    args = parser.parse_args(argv)
    src = RESULTS / f"learning_{args.scale}.csv"
    if not src.exists():
        raise SystemExit(
            f"{src} not found: run `python benchmarks/learning.py --scale {args.scale}` first."
        )
    rows = read_rows(src)
    ablations = sorted({r["method"] for r in rows} - set(MAIN))
    # ablations run on fewer datasets than the main methods: table only those
    ablation_sets = {r["dataset"] for r in rows if r["method"] in ablations}
    ablation_rows = [r for r in rows if r["dataset"] in ablation_sets]
    steps = sorted({r["steps"] for r in rows})
    out = [
        f"# Learning benchmark ({args.scale})",
        "",
        f"Made by `python benchmarks/learning.py --scale {args.scale}` then "
        f"`python benchmarks/report.py --scale {args.scale}`. Every method: the same "
        f"data, networks, batch, {', '.join(steps)} gradient steps and seeds "
        "(settings in `benchmarks/learning.py`, `SCALES`). Normalised score of the "
        "deterministic policy (10 episodes), mean ± std over n seeds.",
        "",
        settings_line(rows),
        "",
        "## Final score",
        "",
        *score_table(rows, MAIN, "final_score"),
        "",
        "## Mean of the last 5 evaluations",
        "",
        *score_table(rows, MAIN, "last_mean_score"),
        "",
    ]
    if ablations:
        out += [
            "## Ablations (Table 1 of the paper)",
            "",
            "Final score / mean of the last 5 evaluations:",
            "",
            *score_table(ablation_rows, ["misa", *ablations], "final_score"),
            "",
            *score_table(ablation_rows, ["misa", *ablations], "last_mean_score"),
            "",
        ]
    for name, methods, subset in (
        ("main", MAIN, rows),
        ("ablations", ["misa", *ablations], ablation_rows),
    ):
        png = RESULTS / f"learning_{args.scale}_{name}.png"
        if plot_curves(subset, methods, png, name):
            out += [f"![{name}]({png.name})", ""]
    out += ["## Throughput", "", *throughput_lines(rows), ""]
    dst = RESULTS / f"learning_{args.scale}.md"
    dst.write_text("\n".join(out))
    print("\n".join(out))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
