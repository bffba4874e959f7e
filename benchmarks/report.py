"""Turns the learning benchmark's csv into a markdown report and PNG learning curves.

    python benchmarks/report.py --scale small
    python benchmarks/report.py --scale small --parity   # ours next to the authors' code

Reads ``benchmarks/results/learning_<scale>.csv`` (one row per run, written by
``benchmarks/learning.py``), the runs' ``summary.json`` (evaluation curves) and
csv logs (update speed; MISA's training diagnostics next to its scores), and ``benchmarks/results/bench_update.json`` (the
update-step throughput benchmark) when present. Writes
``benchmarks/results/learning_<scale>.md`` and ``learning_<scale>_*.png``.

``--parity`` puts our MISA (``misa``, ``misa-authors-sampler`` from
``learning_<scale>.csv``; the probes ``misa-authors-init``, ``misa-rerun``, ...
from ``parity_<scale>.csv``, written by ``benchmarks/parity/probe_init.py``;
``PARITY_ROWS`` says what each changes) next to the authors' code
(``misa-authors-code``, in ``parity_<scale>.csv``, written by
``benchmarks/parity/train_authors.py``) on the datasets the latter ran on,
with bootstrap and Welch intervals of the differences; it writes
``parity_<scale>.md`` and ``parity_<scale>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import same_score  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MAIN = ("misa", "bc", "cql", "iql", "td3bc")
THEIRS = "misa-authors-code"
# The parity report's rows of our code, in order, and what each runs (the text
# before the first " (" is the verdicts' short form). Rows of other names in
# parity_<scale>.csv are tabled after these.
PARITY_ROWS = {
    "misa-torch-init": "torch's initialisation and a fixed log-std offset, the "
    "recipe's default before commit f578c7b (rows of `learning_<scale>.csv`, the "
    "`misa` rows before that commit: seeds 0-2 made at commit de31edf with the "
    "evaluation seeded once per run, seeds 3-4 at commits 34727e6 and e4ce224)",
    "misa-rerun": "the same recipe rerun at commit faa8e92, the code the probes "
    "below patch (`benchmarks/parity/probe_init.py --variant none`)",
    "misa-authors-sampler": "`loss.sampler_mode=authors`, the authors' HMC for the "
    "correction (action space, one adapted step size per batch; rows of "
    "`learning_<scale>.csv`), with the recipe's initialisation when the rows were "
    "made: torch's for the small scale (before commit f578c7b), the authors' for "
    "the mujoco scale",
    "misa-authors-actor-init": "commit faa8e92 with the authors' initialisation and "
    "trainable log-std multiplier and offset on the actor only (critics as before; "
    "`benchmarks/parity/probe_init.py --variant authors-actor-init`)",
    "misa-authors-init": "commit faa8e92 with the authors' initialisation of actor "
    "and critics and trainable log-std multiplier and offset (flax's default on "
    "hidden layers, variance scaling 1e-2 on the last ones, zero biases; "
    "`benchmarks/parity/probe_init.py`): the recipe's default since commit f578c7b",
    "misa": "our recipe as is, which since commit f578c7b starts as the authors' "
    "code (rows of `learning_<scale>.csv`, seeds 0-4 as one agent group)",
}
PARITY = (*PARITY_ROWS, THEIRS)
OURS = tuple(PARITY_ROWS)
# probe_init.py's rows: each probe's change against the same code without it
CONTROL = "misa-rerun"
PROBES = ("misa-authors-actor-init", "misa-authors-init")


def seed_curve(summary: dict, seed: int) -> np.ndarray:
    """``[(step, score)]`` of ``seed`` in a run's summary (one agent or a group)."""
    scores = summary["scores"]
    agents = summary.get("agents", [])
    if len(agents) <= 1:
        return np.asarray(scores, float)
    i = [a["seed"] for a in agents].index(seed)
    return np.asarray([(step, values[i]) for step, values in scores], float)


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def check_one_file_per_dataset(rows: list[dict], source: str) -> None:
    """Refuses to table rows of one dataset made on different files.

    Each row records its dataset's average normalised score; a regenerated
    set under the same name gives another one (``learning.py`` refuses to add
    such rows, this catches csvs written by hand or by older code).
    """
    scores = defaultdict(lambda: defaultdict(int))
    for r in rows:
        value = float(r["dataset_score"])
        seen = scores[r["dataset"]]
        key = next((k for k in seen if same_score(k, value)), value)
        seen[key] += 1
    mixed = {d: seen for d, seen in scores.items() if len(seen) > 1}
    if mixed:
        lines = [
            f"  {d}: " + ", ".join(f"{k:.3f} ({n} rows)" for k, n in seen.items())
            for d, seen in sorted(mixed.items())
        ]
        raise SystemExit(
            f"Rows of one dataset in {source} come from different files (their "
            "dataset averages differ):\n" + "\n".join(lines) + "\nMove the rows "
            "of all but one file to another csv; a table of both would compare "
            "methods on different data."
        )


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


def settings_line(rows: list[dict], mcmc_methods=("misa",)) -> str:
    """The shared settings, read from the runs' own resolved hydra configs.

    The MCMC settings are those of the runs of ``mcmc_methods``.
    """
    import yaml

    seen, mcmc = defaultdict(set), set()
    for r in rows:
        path = REPO / r["run_dir"] / ".hydra" / "config.yaml"
        other = REPO / r["run_dir"] / "config.json"  # runs of the authors' code
        if path.exists():
            cfg = yaml.safe_load(path.read_text())
        elif other.exists():
            cfg = json.loads(other.read_text())["ours"]
        else:
            continue
        net, optim = cfg["network"], cfg["optim"]
        if "eval" in cfg:  # runs made before the config took TorchRL's key names
            batch, every = optim["batch_size"], cfg["eval"]["interval"]
            episodes = cfg["eval"]["episodes"]
        else:
            batch, every = (
                cfg["replay_buffer"]["batch_size"],
                cfg["logger"]["eval_iter"],
            )
            episodes = cfg["logger"]["eval_envs"]
        seen[r["dataset"]].add(
            f"actor {net['actor_hidden_sizes']}, critic {net['critic_hidden_sizes']}, "
            f"batch {batch}, {optim['gradient_steps']} gradient steps, "
            f"evaluation every {every} steps ({episodes} episodes)"
        )
        if r["method"] in mcmc_methods:
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


def method_speeds(rows: list[dict], methods) -> dict[str, list[float]]:
    """Per method, the speed of each of its run folders that logged one (a
    group's seeds share one folder: counted once)."""
    speeds = {}
    for m in methods:
        found = [run_speed(d) for d in method_run_dirs(rows, m)]
        found = [s for s in found if s is not None]
        if found:
            speeds[m] = found
    return speeds


def run_speed(run_dir: Path) -> float | None:
    """Median logged updates/s of a run, per agent.

    The authors' runs log ``train/updates_per_s``; ours ``time/updates_per_s``,
    for a group of n agents (``scalars/agent<i>``) the group's updates, each
    updating all n agents: n times it.
    """
    files = list(run_dir.glob("*/scalars/train/updates_per_s.csv"))
    files = files or list(run_dir.glob("*/scalars/time/updates_per_s.csv"))
    if not files:
        return None
    values = [float(line.split(",")[1]) for line in files[0].read_text().splitlines()]
    agents = len(list(files[0].parents[1].glob("agent*"))) or 1
    return agents * float(np.median(values[1:] or values))  # 1st window: warm-up


def read_curves(rows: list[dict], methods) -> dict:
    """``(dataset, method) -> [seed curves]`` from the runs' ``summary.json``."""
    curves = defaultdict(list)
    for r in rows:
        if r["method"] not in methods:
            continue
        summary = REPO / r["run_dir"] / "summary.json"
        if summary.exists():
            curves[r["dataset"], r["method"]].append(
                seed_curve(json.loads(summary.read_text()), int(r["seed"]))
            )
    return curves


def plateau_step(steps, mean, tolerance: float = 5.0):
    """The first evaluation step from which ``mean`` stays within ``tolerance`` of its end.

    The end is the mean of the last three evaluations; ``None`` when the last
    evaluation itself is farther than ``tolerance`` from it (still moving).
    """
    mean = np.asarray(mean, float)
    end = mean[-3:].mean()
    outside = np.flatnonzero(np.abs(mean - end) > tolerance)
    first = outside[-1] + 1 if outside.size else 0
    return None if first >= len(mean) else int(steps[first])


def plateau_lines(rows: list[dict], methods=MAIN, tolerance: float = 5.0) -> list[str]:
    """Per dataset and method: the budget at which the seed-mean curve plateaus, and
    the curve's peak (a method that peaks early and falls plateaus below it)."""
    curves = read_curves(rows, methods)
    datasets = sorted({d for d, _ in curves})
    present = [m for m in methods if any((d, m) in curves for d in datasets)]
    if not datasets:
        return []
    out = [
        "| dataset | " + " | ".join(present) + " |",
        "|---" * (len(present) + 1) + "|",
    ]
    for d in datasets:
        cells = []
        for m in present:
            runs = curves.get((d, m))
            if not runs:
                cells.append("-")
                continue
            n = min(len(c) for c in runs)
            mean = np.stack([c[:n, 1] for c in runs]).mean(0)
            step = plateau_step(runs[0][:n, 0], mean, tolerance)
            where = "still moving" if step is None else f"{step:,}"
            peak = int(np.argmax(mean))
            cells.append(
                f"{where} ({mean[-3:].mean():.1f}); "
                f"peak {mean[peak]:.1f} at {int(runs[0][peak, 0]):,}"
            )
        out.append(f"| {d} | " + " | ".join(cells) + " |")
    return out


def plot_curves(rows: list[dict], methods, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(rows, methods)
    datasets = sorted({d for d, _ in curves})
    if not datasets:
        return False
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False
    )
    for ax, d in zip(axes[0], datasets):
        for i, m in enumerate(methods):
            runs = curves.get((d, m))
            if not runs:
                continue
            n = min(len(c) for c in runs)
            steps = runs[0][:n, 0]
            values = np.stack([c[:n, 1] for c in runs])
            mean, std = values.mean(0), values.std(0)
            color = f"C{i % 10}"  # a method's colour, whichever others a panel has
            ax.plot(steps, mean, color=color, label=f"{m} ({len(runs)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
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
    speeds = method_speeds(rows, dict.fromkeys(r["method"] for r in rows))
    if speeds:
        lines += [
            "Training speed inside the learning runs above (median logged updates/s "
            "per agent, demo-size networks, runs sharing the 2-core CPU with other "
            "jobs, so only rough ratios between methods mean anything):",
            "",
            "| method | updates/s |",
            "|---|---:|",
        ]
        lines += [f"| {m} | {np.median(v):.1f} |" for m, v in sorted(speeds.items())]
    return lines


def bootstrap_diff(a, b, n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its 95% percentile bootstrap interval (seeds resampled per group)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    diffs = rng.choice(a, (n, len(a))).mean(1) - rng.choice(b, (n, len(b))).mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def welch_interval(a, b) -> tuple[float, float]:
    """95% interval of ``mean(a) - mean(b)`` from Welch's t (unequal variances)."""
    from scipy import stats

    res = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    ci = res.confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def difference_cell(a, b) -> tuple[str, tuple[float, float], tuple[float, float]]:
    """``mean(a) - mean(b)`` as a table cell, ``diff [bootstrap 95%] (Welch 95%)``,
    with the two intervals."""
    diff, low, high = bootstrap_diff(a, b)
    w_low, w_high = welch_interval(a, b)
    cell = f"{diff:+.1f} [{low:+.1f}, {high:+.1f}] ({w_low:+.1f}, {w_high:+.1f})"
    return cell, (low, high), (w_low, w_high)


def versus_best_baseline(rows: list[dict], method: str = "misa") -> list[str]:
    """Markdown: per dataset, ``method`` minus the best baseline, with intervals and a verdict.

    The best baseline is the one with the highest mean on that dataset and
    metric, chosen after the fact, so a "win" is against the strongest
    opponent the data shows. Win or lose: both the bootstrap and Welch
    intervals exclude 0; tie: both hold it; otherwise borderline.
    """
    by = defaultdict(list)
    for r in rows:
        by[r["dataset"], r["method"]].append(r)
    out = [
        "| dataset | metric | best baseline | "
        f"{method} − best: mean [bootstrap 95%] (Welch 95%) | verdict |",
        "|---|---|---|---:|---|",
    ]
    for d in sorted({r["dataset"] for r in rows}):
        if (d, method) not in by:
            continue
        for metric in ("final_score", "last_mean_score"):
            means = {
                m: np.mean([float(r[metric]) for r in by[d, m]])
                for m in MAIN
                if m != method and len(by.get((d, m), [])) > 1
            }
            if not means:
                continue
            best = max(means, key=means.get)
            ours = [float(r[metric]) for r in by[d, method]]
            theirs = [float(r[metric]) for r in by[d, best]]
            cell, (low, high), (w_low, w_high) = difference_cell(ours, theirs)
            if low > 0 and w_low > 0:
                verdict = "win"
            elif high < 0 and w_high < 0:
                verdict = "lose"
            elif low <= 0 <= high and w_low <= 0 <= w_high:
                verdict = "tie"
            else:
                verdict = "borderline"
            label = "final" if metric == "final_score" else "last 5"
            out.append(
                f"| {d} | {label} | {best} (n={len(theirs)}) | {cell}, "
                f"n={len(ours)} | {verdict} |"
            )
    return out if len(out) > 2 else []


def parity_methods(rows: list[dict]) -> list[str]:
    """The parity rows' methods: ``PARITY``'s order, then any other of ours by name."""
    seen = {r["method"] for r in rows}
    return [m for m in PARITY if m in seen] + sorted(seen - set(PARITY))


def parity_lines(rows: list[dict]) -> list[str]:
    """Markdown: the parity rows per dataset, and ours minus theirs with intervals."""
    out = []
    methods = parity_methods(rows)
    ours_methods = [m for m in methods if m != THEIRS]
    for d in sorted({r["dataset"] for r in rows}):
        by = defaultdict(list)
        for r in sorted(rows, key=lambda r: int(r["seed"])):
            if r["dataset"] == d:
                by[r["method"]].append(r)
        out += [
            f"### {d}",
            "",
            "| code | seeds | final score | mean of last 5 evaluations | wall s (median) |",
            "|---|---|---:|---:|---:|",
        ]
        for m in methods:
            if m in by:
                seeds = ",".join(r["seed"] for r in by[m])
                final = mean_std([r["final_score"] for r in by[m]])
                last = mean_std([r["last_mean_score"] for r in by[m]])
                wall = np.median([float(r["wall_s"]) for r in by[m]])
                out.append(f"| {m} | {seeds} | {final} | {last} | {wall:.0f} |")
        out.append("")
        if THEIRS not in by:
            continue
        out += [
            "Our code minus the authors' code: difference of the means over seeds, "
            "its 95% bootstrap interval (10 000 resamples of the seeds of each code) "
            "and, in parentheses, its 95% Welch t interval. With 3 to 5 seeds a side "
            "the percentile bootstrap is too narrow (it treats the few seeds as the "
            "whole population); Welch's interval is the more cautious one.",
            "",
            "| ours | final score | mean of last 5 evaluations |",
            "|---|---:|---:|",
        ]
        verdicts = []
        for m in ours_methods:
            if m not in by:
                continue
            cells = []
            for metric in ("final_score", "last_mean_score"):
                ours = [float(r[metric]) for r in by[m]]
                theirs = [float(r[metric]) for r in by[THEIRS]]
                cell, (low, high), (w_low, w_high) = difference_cell(ours, theirs)
                cells.append(cell)
                verdicts.append((m, metric, low <= 0 <= high, w_low <= 0 <= w_high))
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
        for m in ours_methods:
            mine = [v for v in verdicts if v[0] == m]
            if not mine:
                continue
            boot = [metric for _, metric, ok, _ in mine if not ok]
            welch = [metric for _, metric, _, ok in mine if not ok]
            if not boot and not welch:
                text = "within seed noise of the authors' code: every interval holds 0"
            elif boot and welch:
                text = f"outside seed noise on {', '.join(welch)}: both intervals exclude 0"
            else:
                text = (
                    f"borderline: the bootstrap interval excludes 0 on {', '.join(boot)}, "
                    "Welch's interval does not"
                    if boot
                    else f"borderline: Welch's interval excludes 0 on {', '.join(welch)}"
                )
            change = PARITY_ROWS.get(m, "see `benchmarks/parity/`").split(" (")[0]
            out.append(f"- **{d}, {m}** ({change}): {text}.")
        out.append("")
        probes = [m for m in PROBES if m in by]
        if CONTROL in by and probes:
            out += [
                f"Each probe minus the control `{CONTROL}` (the same code without "
                "the probe's change), same intervals:",
                "",
                "| probe | final score | mean of last 5 evaluations |",
                "|---|---:|---:|",
            ]
            for m in probes:
                cells = []
                for metric in ("final_score", "last_mean_score"):
                    probe = [float(r[metric]) for r in by[m]]
                    control = [float(r[metric]) for r in by[CONTROL]]
                    cells.append(difference_cell(probe, control)[0])
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
    return out


#: (column, logged key, sign): the authors' code logs ``log_pi``, ours ``entropy``,
#: both the mean log-likelihood of the actor's own actions (with opposite signs)
PARITY_DIAGNOSTICS = {
    "misa": (("entropy", "entropy", 1.0), ("alpha", "alpha", 1.0)),
    THEIRS: (("entropy", "log_pi", -1.0), ("alpha", "alpha", 1.0)),
}


def parity_diagnostics_lines(rows: list[dict], most: int = 6) -> list[str]:
    """Per dataset: score, policy entropy and ``alpha`` of our MISA and the authors' code.

    At up to ``most`` evaluation steps both reached; each cell is the mean over
    every seed's value logged at (or last before) that step, from the run
    folders on this machine. Empty without both codes' logs.
    """
    names = [column for column, _, _ in PARITY_DIAGNOSTICS["misa"]]
    out = []
    for d in sorted({r["dataset"] for r in rows}):
        # code -> column -> (sign, one curve per run folder)
        logs = {}
        for m, columns in PARITY_DIAGNOSTICS.items():
            dirs = method_run_dirs([r for r in rows if r["dataset"] == d], m)
            logs[m] = {"score": (1.0, [eval_curves(p) for p in dirs])}
            for column, key, sign in columns:
                logs[m][column] = (sign, [logged_curves(p, "train", key) for p in dirs])
        evaluated = [set(c) for m in logs for c in logs[m]["score"][1]]
        common = set.intersection(*evaluated) if evaluated else set()
        if not all(logs[m]["score"][1] for m in logs) or not common:
            continue
        header = [f"{column}, {m}" for column in ("score", *names) for m in logs]
        out += [
            f"### {d}",
            "",
            "| updates | " + " | ".join(header) + " |",
            "|---:|" + "---:|" * len(header),
        ]
        for step in picked_steps(common, most):
            cells = []
            for column in ("score", *names):
                for m in logs:
                    sign, curves = logs[m][column]
                    values = [v for c in curves for v in at_or_before(c, step)]
                    # (+ 0.0: no "-0" for a zero)
                    cells.append(
                        f"{sign * np.mean(values) + 0.0:.3g}" if values else "-"
                    )
            out.append(f"| {step} | " + " | ".join(cells) + " |")
        out.append("")
    if not out:
        return []
    return [
        "## Training diagnostics, ours and theirs",
        "",
        "Means over seeds (ours: the group's agents) of the normalised score, the "
        "policy's entropy (minus the mean log-likelihood of its own actions on the "
        "training batch) and the temperature `alpha`, each as logged at (or last "
        "before) that evaluation.",
        "",
        *out,
    ]


def parity_report(scale: str) -> Path:
    """Writes ``parity_<scale>.md`` and ``.png``: ours and the authors' code, side by side."""
    theirs_csv = RESULTS / f"parity_{scale}.csv"
    ours_csv = RESULTS / f"learning_{scale}.csv"
    if not theirs_csv.exists():
        raise SystemExit(
            f"{theirs_csv} not found: run benchmarks/parity/train_authors.py first "
            "(see benchmarks/parity/README.md)."
        )
    theirs = read_rows(theirs_csv)
    datasets = {r["dataset"] for r in theirs}
    ours = read_rows(ours_csv) if ours_csv.exists() else []
    rows = [r for r in ours if r["method"] in OURS and r["dataset"] in datasets]
    rows += theirs
    check_one_file_per_dataset(rows, f"{ours_csv} and {theirs_csv}")
    methods = parity_methods(rows)
    out = [
        f"# MISA parity with the authors' code ({scale})",
        "",
        "Our MISA, as it was and with one change at a time, and the authors' JAX code "
        f"(`{THEIRS}`, github.com/sail-sg/MISA, trained by "
        "`benchmarks/parity/train_authors.py` on the same transitions, settings and "
        "evaluation) at the same seeds. Normalised score of the "
        "deterministic policy, mean ± std over seeds. How the runs were made, and "
        "what differs between the two codes: `benchmarks/parity/README.md`.",
        "",
        "| code | what it runs |",
        "|---|---|",
        *[
            f"| {m} | {PARITY_ROWS.get(m, 'see `benchmarks/parity/`')} |"
            for m in methods
            if m != THEIRS
        ],
        f"| {THEIRS} | the authors' code |",
        "",
        settings_line(rows, OURS),
        "",
        *parity_lines(rows),
        *parity_diagnostics_lines(rows),
    ]
    png = RESULTS / f"parity_{scale}.png"
    if plot_curves(rows, methods, png, "parity"):
        out += [
            f"![parity]({png.name})",
            "",
            "Curves: runs whose folder (summary.json) is on this machine.",
            "",
        ]
    speeds = method_speeds(rows, methods)
    if speeds:
        out += [
            "Median logged updates/s per agent of the runs whose folders are here "
            "(one thread each, ours a group of agents where the seeds are one "
            "process, on a 2-core CPU shared with other jobs: rough):",
            "",
            "| code | runs | updates/s |",
            "|---|---:|---:|",
            *[
                f"| {m} | {len(v)} | {np.median(v):.1f} |"
                for m, v in sorted(speeds.items())
            ],
            "",
        ]
    dst = RESULTS / f"parity_{scale}.md"
    dst.write_text("\n".join(out))
    print("\n".join(out))
    print(f"wrote {dst}")
    return dst


def logged_curves(run_dir: Path, kind: str, key: str) -> dict[int, list[float]]:
    """``step -> [each agent's value]`` of a logged scalar, as far as the run got.

    Reads ``<run>/<experiment>/scalars/agent<i>/<kind>/<key>.csv`` (a group) or
    ``.../scalars/<kind>/<key>.csv`` (one agent); steps that not every agent has
    reached yet are left out.
    """
    files = sorted(run_dir.glob(f"*/scalars/agent*/{kind}/{key}.csv"))
    files = files or sorted(run_dir.glob(f"*/scalars/{kind}/{key}.csv"))
    per_agent = []
    for path in files:
        values = {}
        for line in path.read_text().splitlines():
            step, value = line.split(",")
            values[int(float(step))] = float(value)  # a rerun step: its last value
        per_agent.append(values)
    steps = set.intersection(*(set(v) for v in per_agent)) if per_agent else set()
    return {step: [v[step] for v in per_agent] for step in sorted(steps)}


def eval_curves(run_dir: Path) -> dict[int, list[float]]:
    """``step -> [each agent's normalised score]`` from a run folder's CSV logs."""
    return logged_curves(run_dir, "eval", "normalized_score")


#: MISA's training diagnostics next to its scores: the policy's entropy and its
#: temperature, the critic regulariser, the MI bound and the sampler's acceptance
MISA_DIAGNOSTICS = ("entropy", "alpha", "q_gap", "mi_bound", "hmc_acceptance_rate")


def at_or_before(curve: dict[int, list[float]], step: int) -> list[float]:
    """The values of ``curve`` (``step -> values``) logged at ``step`` or last before it."""
    before = [s for s in curve if s <= step]
    return curve[max(before)] if before else []


def picked_steps(steps, most: int) -> list[int]:
    """Up to ``most`` of ``steps``, evenly spaced, the first and the last included."""
    steps = sorted(steps)
    return sorted({steps[round(i)] for i in np.linspace(0, len(steps) - 1, most)})


def diagnostics_lines(run_dir: Path, keys=MISA_DIAGNOSTICS, most: int = 6) -> list[str]:
    """A table of the score and the training diagnostics at up to ``most`` evaluations.

    Evenly spaced evaluation steps, the last included; each cell is the mean
    over the run's agents (the score: mean ± std) of the value logged at that
    step, or at the last step logged before it. Empty when nothing is logged.
    """
    scores = eval_curves(run_dir)
    if not scores:
        return []
    picks = picked_steps(scores, most)
    curves = {key: logged_curves(run_dir, "train", key) for key in keys}
    lines = [
        "| updates | score | " + " | ".join(keys) + " |",
        "|---:|---|" + "---:|" * len(keys),
    ]
    for step in picks:
        score = np.asarray(scores[step])
        spread = score.std(ddof=1) if score.size > 1 else 0.0
        cells = []
        for key in keys:
            values = at_or_before(curves[key], step)
            cells.append(f"{np.mean(values):.3g}" if values else "-")
        lines.append(
            f"| {step} | {score.mean():.1f} ± {spread:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def method_run_dirs(rows: list[dict], method: str) -> list[Path]:
    """The run folders of ``method``'s rows, in order, each once (a group's seeds share one)."""
    return list(
        dict.fromkeys(REPO / r["run_dir"] for r in rows if r["method"] == method)
    )


def diagnostics_section(run_dirs: list[Path]) -> list[str]:
    """The diagnostics tables of the MISA runs among ``run_dirs``, one per run."""
    out = []
    for run_dir in run_dirs:
        table = diagnostics_lines(run_dir)
        if table:
            out += [f"### {run_dir.name}", "", *table, ""]
    if not out:
        return []
    return [
        "## MISA's training diagnostics",
        "",
        "Per MISA run: the normalised score next to, averaged over the run's "
        "agents, the policy's entropy, its temperature `alpha`, `q_gap` (the "
        "critic regulariser, averaged over critics), `mi_bound` (the MI lower "
        "bound's estimate, up to the data's action entropy) and the HMC "
        "acceptance rate, each as logged at (or last before) that evaluation.",
        "",
        *out,
    ]


def in_progress_report(scale: str) -> Path:
    """``learning_<scale>_in_progress.md``: the runs with no row yet, as far as they got.

    A run is finished once it has a row in ``learning_<scale>.csv`` (our methods)
    or ``parity_<scale>.csv`` (the authors' code).
    """
    done = {
        Path(r["run_dir"]).name
        for name in (f"learning_{scale}.csv", f"parity_{scale}.csv")
        if (RESULTS / name).exists()
        for r in read_rows(RESULTS / name)
    }
    lines = [
        f"# Learning benchmark ({scale}): runs under way",
        "",
        f"Made by `python benchmarks/report.py --scale {scale} --in-progress` from "
        f"the run folders under `benchmarks/results/runs/{scale}/` that have no row "
        f"in `learning_{scale}.csv` or `parity_{scale}.csv` yet (a run resumes from "
        "its last checkpoint, so evaluations past it are done again). Normalised "
        "score, mean ± std over the run's seeds.",
        "",
        "| run | evaluations up to | last evaluation | best mean so far |",
        "|---|---|---|---|",
    ]
    for run_dir in sorted((RESULTS / "runs" / scale).glob("*")):
        curves = eval_curves(run_dir)
        if run_dir.name in done or not curves:
            continue
        step = max(curves)
        last = np.asarray(curves[step])
        spread = last.std(ddof=1) if last.size > 1 else 0.0
        best = max(float(np.mean(v)) for v in curves.values())
        lines.append(
            f"| {run_dir.name} | {step} | {last.mean():.1f} ± {spread:.1f} | {best:.1f} |"
        )
    listed = [
        run_dir
        for run_dir in sorted((RESULTS / "runs" / scale).glob("*__misa__*"))
        if run_dir.name not in done
    ]
    diagnostics = diagnostics_section(listed)
    if diagnostics:
        lines += ["", *diagnostics]
    dst = RESULTS / f"learning_{scale}_in_progress.md"
    dst.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return dst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small")
    parser.add_argument(
        "--parity", action="store_true", help="ours next to the authors' code"
    )
    parser.add_argument(
        "--in-progress",
        action="store_true",
        help="the runs without a row yet, from their logs",
    )
    args = parser.parse_args(argv)
    if args.in_progress:
        in_progress_report(args.scale)
        return
    if args.parity:
        parity_report(args.scale)
        return
    src = RESULTS / f"learning_{args.scale}.csv"
    if not src.exists():
        raise SystemExit(
            f"{src} not found: run `python benchmarks/learning.py --scale {args.scale}` first."
        )
    rows = read_rows(src)
    check_one_file_per_dataset(rows, str(src))
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
    versus = versus_best_baseline(rows)
    if versus:
        out += [
            "## MISA against the best baseline",
            "",
            "Per dataset and metric, MISA minus the baseline with the highest mean "
            "there: difference of the means over seeds, its 95% percentile "
            "bootstrap interval (10 000 resamples of each method's seeds) and, in "
            "parentheses, its 95% Welch t interval, the more cautious of the two with "
            "5 seeds a side. Win or lose: both intervals exclude 0; tie: both hold "
            "it; borderline: they disagree. The best baseline is picked after "
            "the fact, which favours the baselines.",
            "",
            *versus,
            "",
        ]
    plateaus = plateau_lines(rows)
    if plateaus:
        out += [
            "## Where each method plateaus",
            "",
            "The first evaluation step from which the seed-mean curve stays within "
            "5 points of its end (the mean of its last three evaluations, in "
            'parentheses); "still moving" when the last evaluation is farther. '
            "Then the curve's peak: its highest seed-mean evaluation and where.",
            "",
            *plateaus,
            "",
        ]
    out += diagnostics_section(method_run_dirs(rows, "misa"))
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
