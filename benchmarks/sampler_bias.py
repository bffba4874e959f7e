"""Bias of the HMC sampler's short chains on a bumpy MISA target, against exact draws.

The target is MISA's ``p(a|s) ∝ pi(a|s) exp Q(s, a)`` for a 1-D tanh-Normal
policy, ``Q(s, a) = 3 sin(2a + s) - 2a²``, ``--states`` states ``s`` in
``[-2, 2]``, policy ``loc = 0.4 s``, ``scale = 0.5 + 0.25 cos s`` (pre-tanh).
Chains start at a policy draw (the "dataset action"), run 5 burn-in
transitions (4 adapted) and keep 50, with 2 leapfrog steps, as MISA's update
does. The exact ``E[u]`` and ``sd[u]`` of the pre-tanh ``u = atanh a`` come
from quadrature on a 6001-point grid over ``[-6, 6]``. Figure: the mean over
states of ``|mean of the 50 samples - E[u]| / sd[u]``; 50 exact independent
draws per state (inverse CDF on the grid) give the floor set by 50 draws.

Three comparisons, each for every seed in ``--seeds``:

- the sampler modes of ``sample_tilted_tanh_normal`` (``whitened``,
  ``pretanh``, ``authors``) against the exact draws;
- ``hmc_sample`` on the same target, whitened by the policy's scale, with a
  step size shared by the batch (the default) or one per chain;
- a 3-D standard normal, ``--chains`` chains started at exact draws, 5 burn-in
  transitions, 50 kept: the variance of the kept samples with a shared and a
  per-chain step size (exact: 1), beside that of as many exact draws.

Each row draws from its own generator seeded with the seed, so the rows of one
seed share their initial positions. Seconds on one CPU core.

    python benchmarks/sampler_bias.py                 # seeds 0 1 2
    python benchmarks/sampler_bias.py --seeds 0

Writes ``benchmarks/results/sampler_bias.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from torchrl_misa.mcmc import hmc_sample, sample_tilted_tanh_normal

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("whitened", "pretanh", "authors")
SETTINGS = {
    "num_samples": 50,
    "num_burnin": 5,
    "num_leapfrog": 2,
}
GRID = (-6.0, 6.0, 6001)
NORMAL_DIM = 3


def bumpy_target(n_states: int) -> dict:
    """The policy, the critic and the exact moments of ``u`` by quadrature."""
    s = torch.linspace(-2, 2, n_states).unsqueeze(-1)
    loc, scale = 0.4 * s, 0.5 + 0.25 * torch.cos(s)

    def q(a):
        return (3 * torch.sin(2 * a + s) - 2 * a.pow(2)).squeeze(-1)

    grid = torch.linspace(*GRID, dtype=torch.float64)
    ta = torch.tanh(grid)
    log_dens = (
        -0.5 * ((grid - loc.double()) / scale.double()).pow(2)
        + 3 * torch.sin(2 * ta + s.double())
        - 2 * ta.pow(2)
    )  # log N(u; loc, scale) + Q(s, tanh u), [n_states, grid]
    p = (log_dens - log_dens.max(-1, keepdim=True).values).exp()
    p = p / p.sum(-1, keepdim=True)
    mean = (p * grid).sum(-1)
    sd = (p * (grid - mean.unsqueeze(-1)).pow(2)).sum(-1).sqrt()
    return {
        "loc": loc,
        "scale": scale,
        "q": q,
        "grid": grid,
        "p": p,
        "mean": mean,
        "sd": sd,
    }


def mean_abs_bias(u: torch.Tensor, target: dict) -> float:
    """Mean over states of ``|mean of the samples - E[u]| / sd[u]``; ``u [k, n]``."""
    u = u.double()
    return ((u.mean(0) - target["mean"]).abs() / target["sd"]).mean().item()


def policy_draw(target: dict, generator: torch.Generator) -> torch.Tensor:
    """One pre-tanh draw per state from the policy (the chains' start)."""
    loc, scale = target["loc"], target["scale"]
    return loc + scale * torch.randn(loc.shape, generator=generator)


def exact_row(target: dict, seed: int) -> dict:
    """50 independent draws per state by inverse CDF on the grid."""
    g = torch.Generator().manual_seed(seed)
    cdf = target["p"].cumsum(-1)
    k = SETTINGS["num_samples"]
    uniform = torch.rand(cdf.shape[0], k, generator=g, dtype=torch.float64)
    index = torch.searchsorted(cdf, uniform).clamp(max=cdf.shape[-1] - 1)
    u = target["grid"][index].T  # [k, n]
    return {"bias": mean_abs_bias(u, target), "acceptance": None}


def mode_row(target: dict, mode: str, seed: int) -> dict:
    """``sample_tilted_tanh_normal`` in ``mode``, chains started at a policy draw."""
    g = torch.Generator().manual_seed(seed)
    init = torch.tanh(policy_draw(target, g))
    actions, info = sample_tilted_tanh_normal(
        target["q"],
        target["loc"],
        target["scale"],
        init,
        generator=g,
        mode=mode,
        **SETTINGS,
    )
    u = torch.atanh(actions.double()).squeeze(-1)
    return {
        "bias": mean_abs_bias(u, target),
        "acceptance": info["acceptance_rate"].mean().item(),
    }


def step_size_row(target: dict, shared: bool, seed: int) -> dict:
    """``hmc_sample`` on the pre-tanh target, preconditioned by the policy scale."""
    loc, scale, q = target["loc"], target["scale"], target["q"]

    def log_p(u):
        return (-0.5 * ((u - loc) / scale).pow(2)).squeeze(-1) + q(torch.tanh(u))

    g = torch.Generator().manual_seed(seed)
    init = policy_draw(target, g)
    u, info = hmc_sample(
        log_p,
        init,
        scale=scale,
        shared_step_size=shared,
        generator=g,
        **SETTINGS,
    )
    return {
        "bias": mean_abs_bias(u.squeeze(-1), target),
        "acceptance": info["acceptance_rate"].mean().item(),
    }


def normal_variance(chains: int, shared: bool | None, seed: int) -> dict:
    """Variance of the kept samples of a 3-D standard normal (exact: 1).

    ``shared=None``: as many exact independent draws, for the noise floor.
    """
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(chains, NORMAL_DIM, generator=g)
    if shared is None:
        shape = (SETTINGS["num_samples"], chains, NORMAL_DIM)
        x, acceptance = torch.randn(shape, generator=g), None
    else:
        x, info = hmc_sample(
            lambda x: -0.5 * x.pow(2).sum(-1),
            init,
            shared_step_size=shared,
            generator=g,
            **SETTINGS,
        )
        acceptance = info["acceptance_rate"].mean().item()
    variance = x.double().reshape(-1, NORMAL_DIM).var(0).mean().item()
    return {"variance": variance, "acceptance": acceptance}


def _bias_row(name: str, rows: list) -> str:
    """A table row: bias per seed, its range, acceptance per seed."""
    return (
        f"| {name} | "
        + " | ".join(_cells(rows, "bias", ".3f"))
        + f" | {_range(rows, 'bias', '.3f')} | "
        + " | ".join(_cells(rows, "acceptance", ".2f"))
        + " |"
    )


def _cells(rows: list[dict], key: str, fmt: str) -> list[str]:
    return [("–" if r[key] is None else format(r[key], fmt)) for r in rows]


def _range(rows: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    if not values:
        return "–"
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"


def markdown(record: dict) -> str:
    seeds = record["seeds"]
    heads = " | ".join(f"seed {s}" for s in seeds)
    bar = "---:|" * len(seeds)
    cfg = record["settings"]
    lines = [
        "# Sampler bias on the bumpy MISA target",
        "",
        f"`{record['command']}` ({record['date']}, {record['seconds']:.0f} s on "
        + f"{record['threads']} thread(s), torch {record['torch']})",
        "",
        f"Target `p(a|s) ∝ pi(a|s) exp Q(s, a)`, `Q(s, a) = 3 sin(2a + s) − 2a²`, "
        f"{cfg['states']} states `s ∈ [−2, 2]`, policy `loc = 0.4 s`, "
        "`scale = 0.5 + 0.25 cos s` (pre-tanh); chains started at a policy draw, "
        f"{cfg['num_burnin']} burn-in transitions ({cfg['num_burnin'] - 1} adapted), "
        f"{cfg['num_samples']} kept, {cfg['num_leapfrog']} leapfrog steps, initial "
        "step size 1.0. Exact `E[u]`, `sd[u]` by quadrature on a "
        f"{GRID[2]}-point grid over [{GRID[0]:g}, {GRID[1]:g}]. Figure: mean over "
        "states of `|mean of the 50 samples − E[u]| / sd[u]`.",
        "",
        "## Sampler modes (`sample_tilted_tanh_normal`)",
        "",
        f"| sampler | {heads} | range | acceptance: {heads} |",
        f"|---|{bar}---:|{bar}",
    ]
    names = {"exact": "50 exact independent draws (inverse CDF)"}
    names.update({m: f"`{m}`" for m in MODES})
    names["whitened"] += " (default)"
    for key, name in names.items():
        lines.append(_bias_row(name, record["modes"][key]))
    lines += [
        "",
        "## Step size shared by the batch or one per chain (`hmc_sample`, whitened)",
        "",
        "The same target and chains, `hmc_sample` with `scale=` the policy's "
        "scale and `shared_step_size=True` (default) or `False`.",
        "",
        f"| step size | {heads} | range | acceptance: {heads} |",
        f"|---|{bar}---:|{bar}",
    ]
    for key, name in (("shared", "shared (default)"), ("per_chain", "per chain")):
        lines.append(_bias_row(name, record["step_size"][key]))
    lines += [
        "",
        f"## {NORMAL_DIM}-D standard normal: variance of the kept samples (exact 1)",
        "",
        f"{cfg['chains']} chains started at exact draws, {cfg['num_burnin']} "
        f"burn-in transitions, {cfg['num_samples']} kept, {cfg['num_leapfrog']} "
        "leapfrog steps; variance of all kept samples, mean over dimensions. "
        "Exact draws: as many independent draws.",
        "",
        f"| step size | {heads} | acceptance: {heads} |",
        f"|---|{bar}{bar}",
    ]
    for key, name in (
        ("shared", "shared (default)"),
        ("per_chain", "per chain"),
        ("exact", "exact draws"),
    ):
        rows = record["normal"][key]
        lines.append(
            f"| {name} | "
            + " | ".join(_cells(rows, "variance", ".3f"))
            + " | "
            + " | ".join(_cells(rows, "acceptance", ".2f"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--states", type=int, default=512)
    parser.add_argument(
        "--chains", type=int, default=4000, help="chains of the normal check"
    )
    parser.add_argument("--tag", default="sampler_bias")
    args = parser.parse_args(argv)
    options = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/sampler_bias.py", *options])

    start = time.perf_counter()
    target = bumpy_target(args.states)
    modes = {key: [] for key in ("exact", *MODES)}
    step_size = {"shared": [], "per_chain": []}
    normal = {"shared": [], "per_chain": [], "exact": []}
    for seed in args.seeds:
        modes["exact"].append(exact_row(target, seed))
        for mode in MODES:
            modes[mode].append(mode_row(target, mode, seed))
        for key, shared in (("shared", True), ("per_chain", False)):
            step_size[key].append(step_size_row(target, shared, seed))
        for key, shared in (("shared", True), ("per_chain", False), ("exact", None)):
            normal[key].append(normal_variance(args.chains, shared, seed))
        print(
            f"seed {seed}: bias/sd exact {modes['exact'][-1]['bias']:.3f}, "
            + ", ".join(
                f"{m} {modes[m][-1]['bias']:.3f} "
                f"(acceptance {modes[m][-1]['acceptance']:.2f})"
                for m in MODES
            ),
            flush=True,
        )
    record = {
        "command": command,
        "seeds": args.seeds,
        "settings": {**SETTINGS, "states": args.states, "chains": args.chains},
        "modes": modes,
        "step_size": step_size,
        "normal": normal,
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    (RESULTS / f"{args.tag}.md").write_text(text)
    print(text)
    return record


if __name__ == "__main__":
    main()
