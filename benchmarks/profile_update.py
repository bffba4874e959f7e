"""Where an agent group's eager update spends its time, by operator.

Profiles the eager MISA group update of ``bench_update.py --agents`` (small
setting by default: 64-64, k = 10, batch 256 per agent) with
:mod:`torch.profiler` for each agent count, and tables every operator's share
of the self CPU time, for the operators that take the most. Operators are
grouped by name; the batched multiplies (``bmm``, ``addmm``, ``mm``,
``baddbmm``) and the critic's ELU (forward and backward) are also summed.

Writes ``benchmarks/results/profile_update[_<tag>].json`` and ``.md``. Run it
on a quiet machine.

Usage::

    python benchmarks/profile_update.py --agents 1 5
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch.profiler import profile, ProfilerActivity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import (  # noqa: E402
    AGENT_SETTINGS,
    LRS,
    MISA_KEYS,
    RESULTS,
    AgentGroup,
    make_agent_misa,
    make_batches,
    make_group_update,
    stack_batches,
)

# operator families summed in the table
FAMILIES = {
    "matrix multiplies": ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm"),
    "ELU, forward and backward": ("aten::elu", "aten::elu_backward"),
}


def profile_group(num_agents: int, hidden: int, k: int, args) -> dict:
    """Self CPU time per operator over ``args.steps`` updates of one eager group."""
    device = torch.device("cpu")

    def make_loss():
        return make_agent_misa(args, hidden, k, device, validate_inputs=False)

    group = AgentGroup.from_factory(make_loss, num_agents, seed=0)
    update = make_group_update(group, MISA_KEYS, LRS, compile_update=False)
    base = make_batches(8, args.batch, args.obs_dim, args.act_dim, device)
    batches = stack_batches(base, num_agents)
    for i in range(args.warmup):
        update(batches[i % len(batches)].copy())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            update(batches[i % len(batches)].copy())
    ops = {
        e.key: {"self_ms": e.self_cpu_time_total / 1e3 / args.steps, "calls": e.count}
        for e in prof.key_averages()
    }
    total = sum(op["self_ms"] for op in ops.values())
    families = {
        name: sum(ops.get(op, {}).get("self_ms", 0.0) for op in members)
        for name, members in FAMILIES.items()
    }
    return {"agents": num_agents, "total_ms": total, "ops": ops, "families": families}


def write_markdown(path: Path, meta: dict, runs: list, top: int) -> None:
    lines = [
        "# Where an eager agent-group update spends its time",
        "",
        f"Command: `{meta['command']}`  ",
        f"torch {meta['torch']}, {meta['threads']} threads; setting "
        f"{meta['setting']}, {meta['steps']} profiled updates per row; self CPU "
        "time per update (the profiler's own overhead included).",
        "",
    ]
    for run in runs:
        total = run["total_ms"]
        lines += [
            f"## {run['agents']} agent(s): {total:.1f} ms of self CPU time per update",
            "",
            "| operator | ms / update | share | calls / update |",
            "|---|---:|---:|---:|",
        ]
        for name, ms in run["families"].items():
            lines.append(f"| **{name}** | {ms:.1f} | {ms / total:.0%} | |")
        ranked = sorted(run["ops"].items(), key=lambda kv: -kv[1]["self_ms"])
        for name, op in ranked[:top]:
            lines.append(
                f"| {name} | {op['self_ms']:.1f} | {op['self_ms'] / total:.0%} "
                f"| {op['calls'] / meta['steps']:.0f} |"
            )
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--setting", default="small", choices=AGENT_SETTINGS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=12, help="operators tabled")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--burnin", type=int, default=5)
    parser.add_argument("--leapfrog", type=int, default=2)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.agents) < 1:
        parser.error("--steps and every --agents count must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="No target network updater")
    hidden, k = AGENT_SETTINGS[args.setting]
    runs = []
    for n in args.agents:
        run = profile_group(n, hidden, k, args)
        runs.append(run)
        shares = ", ".join(
            f"{name} {ms / run['total_ms']:.0%}" for name, ms in run["families"].items()
        )
        print(f"{n} agent(s): {run['total_ms']:.1f} ms self CPU / update; {shares}")
    meta = {
        "command": " ".join(
            ["profile_update.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setting": args.setting,
        "steps": args.steps,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "profile_update" + (f"_{args.tag}" if args.tag else "")
    payload = {"meta": meta, "runs": runs}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(RESULTS / f"{stem}.md", meta, runs, args.top)
    print(f"wrote {RESULTS / stem}.json and .md")
    return payload


if __name__ == "__main__":
    main()
