"""Plots a run's learning curve (normalised score vs gradient steps) from its csv log.

    python sota-implementations/misa/plot_curve.py outputs/<date>/<time> -o curve.png

The argument is the run's hydra output folder (or the csv logger's experiment
folder inside it); the csv logger writes ``<exp>/scalars/eval/normalized_score.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torchrl._utils import logger as torchrl_logger

from torchrl_misa.data import dataset_average_normalized_score


def read_curve(run_dir: Path) -> np.ndarray:
    files = sorted(Path(run_dir).glob("**/scalars/eval/normalized_score.csv"))
    if not files:
        raise SystemExit(
            f"No eval/normalized_score.csv under {run_dir}: was the run logged with "
            "logger.backend=csv?"
        )
    return np.loadtxt(files[-1], delimiter=",", ndmin=2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("learning_curve.png"))
    parser.add_argument(
        "--dataset", help="draw this dataset's average normalised score"
    )
    parser.add_argument("--title", default="MISA")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [read_curve(d) for d in args.run_dirs]
    n = min(len(c) for c in curves)
    steps = curves[0][:n, 0]
    scores = np.stack([c[:n, 1] for c in curves])
    fig, ax = plt.subplots(figsize=(6, 4))
    label = f"MISA ({len(curves)} run{'s' if len(curves) > 1 else ''})"
    ax.plot(steps, scores.mean(0), marker="o", label=label)
    if len(curves) > 1:
        ax.fill_between(steps, scores.min(0), scores.max(0), alpha=0.2)
    if args.dataset:
        ax.axhline(
            dataset_average_normalized_score(args.dataset),
            color="k",
            ls="--",
            label="dataset average",
        )
    ax.set(xlabel="gradient steps", ylabel="normalised score", title=args.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    torchrl_logger.info(f"wrote {args.output}")


if __name__ == "__main__":
    main()
