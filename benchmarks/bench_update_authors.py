"""Update-step throughput of the authors' JAX MISA (github.com/sail-sg/MISA), for comparison.

Run with a JAX environment, not this package's: it imports the authors' code
from a local checkout, unmodified (see ``benchmarks/parity/authors.py``), and
times their jitted ``MISA.train`` on random transitions of the given sizes.
Prints one JSON line; ``benchmarks/bench_update.py --authors-dir`` runs it
next to ours.

Usage::

    /path/to/jax-venv/bin/python benchmarks/bench_update_authors.py \\
        --authors-dir /path/to/MISA --hidden 64 --k 10 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "parity"))
from authors import import_authors  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-dir", required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--burnin", type=int, default=5)
    parser.add_argument("--leapfrog", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--warmup", type=int, default=5, help="jit compiles again on the first steps"
    )
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    authors = import_authors(args.authors_dir)
    authors.init_rng(0)
    arch = f"{args.hidden}-{args.hidden}"
    # their defaults: no orthogonal init, log-std multiplier 1, offset -1; ELU critic
    policy = authors.TanhGaussianPolicy(
        args.obs_dim, args.act_dim, arch, False, 1.0, -1.0
    )
    qf = authors.FullyConnectedQFunction(
        args.obs_dim, args.act_dim, arch, False, False, "elu"
    )
    config = {
        "n_actions": args.k,
        "mcmc_burnin_steps": args.burnin,
        "mcmc_num_leapfrog_steps": args.leapfrog,
        "target_entropy": -float(args.act_dim),
    }
    agent = authors.MISA(config, policy, qf)
    rng = np.random.default_rng(0)
    n = args.batch
    batches = [
        {
            "observations": jnp.asarray(
                rng.normal(size=(n, args.obs_dim)), jnp.float32
            ),
            "actions": jnp.asarray(
                rng.uniform(-0.999, 0.999, (n, args.act_dim)), jnp.float32
            ),
            "rewards": jnp.asarray(rng.normal(size=n), jnp.float32),
            "next_observations": jnp.asarray(
                rng.normal(size=(n, args.obs_dim)), jnp.float32
            ),
            "dones": jnp.asarray(rng.uniform(size=n) < 0.01, jnp.float32),
        }
        for _ in range(8)
    ]
    t0 = time.perf_counter()
    for i in range(args.warmup):
        jax.block_until_ready(agent.train(batches[i % len(batches)]))
    warmup_s = time.perf_counter() - t0
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        jax.block_until_ready(agent.train(batches[i % len(batches)]))
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    result = {
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "median_step_ms": 1e3 * median,
        "mean_step_ms": 1e3 * statistics.fmean(times),
        "updates_per_s": 1.0 / median,
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
