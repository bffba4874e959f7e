"""A markdown summary of a generated dataset: ``python -m torchrl_misa.data.describe FILE``.

Reads the file's ``metadata/*`` and arrays (and the run's ``summary.json``
when the checkpoint folder is there) and prints the table used in
``benchmarks/results/datasets.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from torchrl_misa.data.h5read import _h5py, read_metadata
from torchrl_misa.data.scores import (
    dataset_average_normalized_score,
    dataset_episode_returns,
)


def describe(path: str | Path) -> str:
    """Markdown table of ``path``'s size, returns, reference returns and generation time.

    Examples:
        >>> from torchrl_misa.data import DEMO_DATASET_PATH
        >>> print(describe(DEMO_DATASET_PATH).splitlines()[2])
        | env / recipe / seed | Pendulum-v1 / medium-replay / 0 |
    """
    path = Path(path)
    meta = read_metadata(path)
    returns = dataset_episode_returns(path)
    with _h5py().File(path, "r") as f:
        n = f["rewards"].shape[0]
        terminals = int(f["terminals"][:].sum())
        timeouts = int(f["timeouts"][:].sum()) if "timeouts" in f else 0
    rows = [
        (
            "env / recipe / seed",
            f"{meta.get('env_id')} / {meta.get('recipe')} / {meta.get('seed')}",
        ),
        (
            "transitions / episodes",
            f"{n} / {returns.size} ({terminals} terminals, {timeouts} timeouts)",
        ),
        (
            "episode returns: mean / median / min / max",
            (
                f"{returns.mean():.1f} / {np.median(returns):.1f} / {returns.min():.1f} / {returns.max():.1f}"
                if returns.size
                else "none (no complete episode)"
            ),
        ),
        (
            "dataset average normalised score",
            (
                f"{dataset_average_normalized_score(path):.1f}"
                if returns.size
                else "undefined (no complete episode)"
            ),
        ),
        ("file size", f"{path.stat().st_size / 1e6:.2f} MB"),
    ]
    for key, label in (
        ("random_return", "`R_random`"),
        ("expert_return", "`R_expert`"),
        ("medium_step", "medium policy step"),
        ("medium_return", "medium policy eval return"),
        ("train_steps", "SAC training budget (env steps)"),
        ("train_time_s", "SAC training time (s)"),
    ):
        if key in meta:
            value = meta[key]
            rows.append(
                (label, f"{value:.1f}" if isinstance(value, float) else str(value))
            )
    checkpoint = str(meta.get("policy_checkpoint", "")).split(";")[0]
    summary = Path(checkpoint).parent / "summary.json" if checkpoint else None
    if summary is not None and summary.exists():
        s = json.loads(summary.read_text())
        rows.append(("final evaluations time (s)", f"{s['final_eval_time_s']:.1f}"))
        stds = (s.get("expert_return_std"), s.get("random_return_std"))
        if None not in stds:  # given as reference returns, not measured: no std
            rows.append(
                (
                    "`R_expert` std / `R_random` std",
                    f"{stds[0]:.1f} / {stds[1]:.1f}",
                )
            )
    lines = ["| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m torchrl_misa.data.describe")
    parser.add_argument("files", nargs="+")
    for path in parser.parse_args(argv).files:
        print(f"### {Path(path).name}\n\n{describe(path)}\n")


if __name__ == "__main__":
    main()
