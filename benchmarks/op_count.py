"""Ops per update: what a GPU pays for in kernel launches.

On a GPU, an update of small networks is bound by kernel launches, not by
arithmetic: its eager time follows the number of ops. This script counts, for
one update (losses, backward, Adam, target update), the aten ops dispatched
and those that launch a kernel (all but views, ``detach`` and allocations),
eager, MISA and CQL(10), at the small (64-64, k = 10) and paper (256-256,
k = 50) settings, for one agent and a vmapped group of N. MISA's ops per HMC
transition are the difference between two updates whose chains differ by
one burn-in transition.

With ``--compiled``, the kernels inductor generates for the compiled update
(forward and backward graphs; the HMC chain's scan body counts once, though
it runs once per transition) are counted too, for one agent at the small
setting. Counts do not depend on the machine; no timing here.

    python benchmarks/op_count.py                 # eager rows, seconds
    python benchmarks/op_count.py --compiled      # + compiled rows (minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import (  # noqa: E402
    AGENT_SETTINGS,
    CQL_KEYS,
    LRS,
    make_agent_misa,
    make_batches,
    make_group_update,
    make_networks,
    make_update,
    MISA_KEYS,
    stack_batches,
)

from torchrl.objectives import CQLLoss  # noqa: E402

from torchrl_misa.agents import AgentGroup  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
aten = torch.ops.aten
# Dispatched, but no kernel runs: allocations and aliasing.
NO_KERNEL = {
    aten.detach.default,
    aten.alias.default,
    aten._unsafe_view.default,
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.lift_fresh.default,
}
SHAPES = types.SimpleNamespace(obs_dim=17, act_dim=6, burnin=5, leapfrog=2, batch=256)


def launches_kernel(func) -> bool:
    return not func.is_view and func not in NO_KERNEL


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched, and those that launch a kernel."""

    def __init__(self):
        super().__init__()
        self.ops = self.launching = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.launching += launches_kernel(func)
        return func(*args, **(kwargs or {}))


def make_loss(algo: str, setting: str, burnin: int = SHAPES.burnin):
    hidden, k = AGENT_SETTINGS[setting]
    if algo == "misa":
        shapes = types.SimpleNamespace(**{**vars(SHAPES), "burnin": burnin})
        loss = make_agent_misa(
            shapes, hidden, k, torch.device("cpu"), validate_inputs=False
        )
    else:
        actor, critic = make_networks(
            SHAPES.obs_dim, SHAPES.act_dim, hidden, torch.device("cpu")
        )
        loss = CQLLoss(actor, critic, num_random=10, loss_function="l2")
    loss.make_value_estimator(gamma=0.99)
    return loss


def make_step(algo: str, setting: str, agents: int, burnin: int, compiled: bool):
    """``(update, batches)``: one update of ``agents`` agents and its inputs."""
    keys = MISA_KEYS if algo == "misa" else CQL_KEYS
    batches = make_batches(3, SHAPES.batch, SHAPES.obs_dim, SHAPES.act_dim, "cpu")
    torch.manual_seed(0)
    if agents == 1:
        loss = make_loss(algo, setting, burnin)
        return make_update(loss, keys, LRS, compiled, False), batches
    group = AgentGroup.from_factory(
        lambda: make_loss(algo, setting, burnin), agents, seed=0
    )
    return make_group_update(group, keys, LRS, compiled), stack_batches(batches, agents)


def count_eager(algo: str, setting: str, agents: int, burnin: int) -> dict:
    update, batches = make_step(algo, setting, agents, burnin, compiled=False)
    update(batches[0].copy())  # Adam's state and lazy set-up
    with OpCounter() as counter:
        update(batches[1].copy())
    return {"aten_ops": counter.ops, "launching_ops": counter.launching}


def count_compiled(algo: str, setting: str) -> dict:
    from torch._inductor import metrics

    torch._dynamo.reset()
    metrics.reset()
    update, batches = make_step(algo, setting, 1, SHAPES.burnin, compiled=True)
    for batch in batches[:2]:  # forward and backward graphs
        update(batch.copy())
    return {"generated_kernels": metrics.generated_kernel_count}


def per_transition(eager_row: dict, setting: str, agents: int) -> dict:
    longer = count_eager("misa", setting, agents, SHAPES.burnin + 1)
    return {
        f"{key}_per_hmc_transition": longer[key] - eager_row[key]
        for key in ("aten_ops", "launching_ops")
    }


def run(args) -> list[dict]:
    rows = []
    for setting in args.settings:
        for algo in ("misa", "cql10"):
            for agents in args.agents:
                row = {"setting": setting, "algorithm": algo, "agents": agents}
                row.update(count_eager(algo, setting, agents, SHAPES.burnin))
                if algo == "misa":
                    row.update(per_transition(row, setting, agents))
                print(json.dumps(row), flush=True)
                rows.append(row)
            if args.compiled and setting == "small":
                row = {"setting": setting, "algorithm": algo, "agents": 1}
                row.update(mode="compiled", **count_compiled(algo, setting))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def write(rows: list[dict], tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    name = "op_count" + (f"_{tag}" if tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Ops per update (forward, backward, Adam, target update)",
        "",
        "Command: `python benchmarks/op_count.py "
        + " ".join(sys.argv[1:])
        + f"`; torch {torch.__version__}. Batch 256 per agent, obs 17 / act 6,"
        " burn-in 5, 2 leapfrog steps; small = 64-64, k = 10; paper = 256-256,"
        " k = 50. Eager counts are dispatched aten ops; launching ops exclude views,"
        " detach and allocations. Compiled: kernels inductor generated for the"
        " update's graphs (the HMC chain's scan body counted once).",
        "",
        "| setting | algorithm | agents | mode | aten ops | launching ops "
        "| launching ops per HMC transition | generated kernels |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['algorithm']} | {r['agents']} "
            f"| {r.get('mode', 'eager')} | {r.get('aten_ops', '')} "
            f"| {r.get('launching_ops', '')} "
            f"| {r.get('launching_ops_per_hmc_transition', '')} "
            f"| {r.get('generated_kernels', '')} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["small", "paper"])
    parser.add_argument("--agents", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    write(run(args), args.tag)


if __name__ == "__main__":
    main()
