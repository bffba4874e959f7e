"""Update-step throughput: MISALoss against TorchRL's CQLLoss on the same networks.

One update = loss forward + backward + Adam step + target update
(:class:`torchrl.objectives.SoftUpdate`), at the paper's settings: batch 256,
256-256 networks, observation 17 / action 6, k = 50 MCMC samples, 5 burn-in
steps, 2 leapfrog steps. Configurations:

* ``misa``: eager; ``misa_compiled_sampler``: ``compile_sampler=True``;
  with ``--compile`` also ``misa_compiled_update`` (the whole update under
  :func:`torch.compile`);
* ``cql10`` / ``cql50``: :class:`~torchrl.objectives.CQLLoss` with
  ``num_random`` 10 and 50 (the authors' CQL setting), eager, plus compiled
  versions with ``--compile``.

With ``--cudagraphs`` (CUDA only) the compiled updates are also wrapped in
:class:`tensordict.nn.CudaGraphModule`.

Prints updates/s per configuration and the ratios of MISA to CQL, and writes
``benchmarks/results/bench_update[_<tag>].json`` and ``.md``.

With ``--agents N [N ...]`` it measures groups of N independent agents instead
(:class:`torchrl_misa.agents.AgentGroup`, one vmapped update for all): MISA and
CQL(10) (and IQL with ``--algorithms ... iql``) at the small setting (64-64, k = 10) and the paper setting (256-256,
k = 50), eager and compiled, aggregate and per-agent updates/s, next to the
authors' jitted JAX update when ``--authors-dir`` (their checkout) and
``--jax-python`` (a JAX environment's interpreter) are given. A MISA group
draws every agent's HMC samples in one sampler call outside its vmap
(compiled transition in the compiled rows); ``--vmap-sampler`` adds rows
with the sampler inside the vmap, eager, for comparison. With
``--cudagraphs`` each agent count also gets a ``cudagraph`` row: the eager
vmapped update captured once in a CUDA graph and replayed. A configuration
that fails is recorded with its error (and traceback, in the json) and the
others go on. ``--repeats R`` measures every row R times, in turn, and
reports each ratio's median over the repeats with its lowest and highest
value (ratios are formed within one repeat). Writes
``benchmarks/results/bench_update_agents[_<tag>].json`` and ``.md``, again
after every repeat: a stopped run keeps the repeats it finished, and says so.

Usage::

    python benchmarks/bench_update.py                 # CPU, eager + compiled sampler
    python benchmarks/bench_update.py --compile       # + fully compiled updates
    python benchmarks/bench_update.py --device cuda --compile --cudagraphs
    python benchmarks/bench_update.py --quick         # a few steps, to check it runs
    python benchmarks/bench_update.py --agents 1 2 5 10 --compiled-agents 1 5 \
        --authors-dir /path/to/MISA --jax-python /path/to/jax-venv/bin/python
    python benchmarks/bench_update.py --agents 1 5 --paper-agents --algorithms misa \
        --repeats 5 --authors-dir ... --jax-python ...   # ratios with their spread
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from torchrl.data import Bounded
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from torchrl.modules import ValueOperator
from torchrl.objectives import CQLLoss, IQLLoss, SoftUpdate

try:
    from torchrl_misa import MISALoss
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from torchrl_misa import MISALoss
from torchrl_misa.agents import AgentGroup

RESULTS = Path(__file__).resolve().parent / "results"
# (hidden width, k): the small setting, and the paper's
AGENT_SETTINGS = {"small": (64, 10), "paper": (256, 50)}
# MISA groups measured: with every agent's samples drawn outside the vmap (the
# default), or the sampler inside it (--vmap-sampler); their batched_sampler
MISA_ALGOS = {"misa": True, "misa_vmap_sampler": False}
AGENT_TARGETS = {
    "small_5_agents_vs_1_eager": 3.0,
    "small_5_agents_vs_1_compiled": 1.5,
    "small_compiled_misa_vs_authors_jax": 1.0,
    "paper_compiled_misa_vs_authors_jax": 2.0,
}
# GPU only: 10 agents at the paper setting against one, per mode
GPU_TARGETS = {
    f"paper_10_agents_vs_1_{m}": 5.0
    for m in ("eager", "compiled", "cudagraph", "compiled_cudagraph")
}
AGENT_TARGETS.update(GPU_TARGETS)
# Adam's learning rates per parameter group (the authors' defaults) and the
# losses each update sums
LRS = {"actor_network_params": 1e-4, "qvalue_network_params": 3e-4, "log_alpha": 1e-4}
MISA_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha")
CQL_KEYS = ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha")
# IQL (agent rows only): no temperature to learn, a state-value network instead
IQL_KEYS = ("loss_actor", "loss_qvalue", "loss_value")
IQL_LRS = {
    "actor_network_params": 3e-4,
    "qvalue_network_params": 3e-4,
    "value_network_params": 3e-4,
}
PAPER_UPDATES = 1_200_000  # the paper's training length in gradient steps
TARGETS = {
    "min_updates_per_s": 5.4,  # spec §6, 2-core CPU
    "max_step_ratio_vs_cql10": 2.5,
}


def make_networks(obs_dim: int, act_dim: int, hidden: int, device: torch.device):
    """Actor (ReLU MLP, TanhNormal) and critic (ELU MLP), as in the paper."""
    actor_mlp = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
            device=device,
        ),
        NormalParamExtractor(),
    )
    spec = Bounded(-1.0, 1.0, (act_dim,), device=device)
    actor = ProbabilisticActor(
        TensorDictModule(actor_mlp, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        # bounds on the device: TanhNormal's default (python floats) copies
        # them host-to-device on every call, which CUDA-graph capture refuses
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    critic = ValueOperator(
        MLP(
            in_features=obs_dim + act_dim,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ELU,
            device=device,
        ),
        in_keys=["observation", "action"],
    )
    return actor, critic


def make_value_network(obs_dim: int, hidden: int, device: torch.device):
    """IQL's state-value network, shaped as the critic (ELU MLP)."""
    return ValueOperator(
        MLP(
            in_features=obs_dim,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ELU,
            device=device,
        ),
        in_keys=["observation"],
    )


def make_batches(n: int, batch: int, obs_dim: int, act_dim: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        done = torch.rand(batch, 1, generator=g) < 0.01
        td = TensorDict(
            {
                "observation": torch.randn(batch, obs_dim, generator=g),
                "action": (torch.rand(batch, act_dim, generator=g) * 2 - 1) * 0.999,
                "next": {
                    "observation": torch.randn(batch, obs_dim, generator=g),
                    "reward": torch.randn(batch, 1, generator=g),
                    "done": done,
                    "terminated": done.clone(),
                },
            },
            [batch],
        )
        out.append(td.to(device))
    return out


def make_update(loss_module, loss_keys, lrs, compile_update: bool, cudagraphs: bool):
    """The update step: losses, backward, Adam, Polyak target update."""
    groups = []
    for prefix, lr in lrs.items():
        params = [p for n, p in loss_module.named_parameters() if n.startswith(prefix)]
        if params:
            groups.append({"params": params, "lr": lr})
    optim = torch.optim.Adam(groups, capturable=cudagraphs)
    updater = SoftUpdate(loss_module, tau=5e-3)

    def update(data):
        out = loss_module(data)
        total = sum(out[k] for k in loss_keys)
        optim.zero_grad(set_to_none=False)
        total.backward()
        optim.step()
        updater.step()
        return total.detach()

    if compile_update:
        # inductor lowers the HMC chain's scan to a loop reading its counter
        torch._dynamo.config.capture_scalar_outputs = True
        update = torch.compile(update)
    if cudagraphs:
        from tensordict.nn import CudaGraphModule

        update = CudaGraphModule(update, warmup=5)
    return update


def time_update(update, batches, steps: int, warmup: int, device) -> dict:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    # shallow copies: the losses write entries (td_error, ...) into their input
    for i in range(warmup):
        update(batches[i % len(batches)].copy())
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        data = batches[i % len(batches)].copy()
        sync()
        t = time.perf_counter()
        update(data)
        sync()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "steps": steps,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "median_step_ms": 1e3 * median,
        "mean_step_ms": 1e3 * statistics.fmean(times),
        "updates_per_s": 1.0 / median,
    }


def build_configs(args, device):
    cfgs = []

    def misa(compile_sampler):
        def make():
            torch.manual_seed(0)
            actor, critic = make_networks(
                args.obs_dim, args.act_dim, args.hidden, device
            )
            return MISALoss(
                actor,
                critic,
                num_mcmc_samples=args.k,
                num_burnin=args.burnin,
                num_leapfrog=args.leapfrog,
                compile_sampler=compile_sampler,
                validate_inputs=not (args.compile or args.cudagraphs),
            )

        return make

    def cql(num_random):
        def make():
            torch.manual_seed(0)
            actor, critic = make_networks(
                args.obs_dim, args.act_dim, args.hidden, device
            )
            loss = CQLLoss(actor, critic, num_random=num_random, loss_function="l2")
            loss.make_value_estimator(gamma=0.99)
            return loss

        return make

    cfgs.append(("misa", misa(False), MISA_KEYS, False))
    cfgs.append(("misa_compiled_sampler", misa(True), MISA_KEYS, False))
    if args.compile:
        # the whole update under torch.compile, the HMC chain inside the graph
        # as one scan; under CUDA graphs the chain runs its own compiled
        # transition instead (a scan reads its counter on the host)
        cfgs.append(("misa_compiled_update", misa(args.cudagraphs), MISA_KEYS, True))
    for n in (10, 50):
        cfgs.append((f"cql{n}", cql(n), CQL_KEYS, False))
        if args.compile:
            cfgs.append((f"cql{n}_compiled_update", cql(n), CQL_KEYS, True))
    if args.only:
        cfgs = [c for c in cfgs if c[0] in args.only]
    return [(name, make, keys, comp, LRS) for name, make, keys, comp in cfgs]


def summarise(results: dict) -> dict:
    """Ratios of each MISA configuration's step time to eager CQL's.

    The targets are read against eager ``CQLLoss`` (TorchRL's default use); the
    ratio to CQL in the same compile mode is reported next to it.
    """
    summary = {}
    for name, res in results.items():
        if not name.startswith("misa"):
            continue
        row = {"updates_per_s": res["updates_per_s"]}
        for cql in ("cql10", "cql50"):
            if cql in results:
                ratio = res["median_step_ms"] / results[cql]["median_step_ms"]
                row[f"step_ratio_vs_{cql}"] = ratio
            same = f"{cql}_compiled_update"
            if name.endswith("compiled_update") and same in results:
                ratio = res["median_step_ms"] / results[same]["median_step_ms"]
                row[f"step_ratio_vs_{same}"] = ratio
        row["meets_min_updates_per_s"] = (
            res["updates_per_s"] >= TARGETS["min_updates_per_s"]
        )
        if "step_ratio_vs_cql50" in row:
            row["faster_than_cql50"] = row["step_ratio_vs_cql50"] < 1.0
        if "step_ratio_vs_cql10" in row:
            row["within_2.5x_cql10"] = (
                row["step_ratio_vs_cql10"] <= TARGETS["max_step_ratio_vs_cql10"]
            )
        summary[name] = row
    return summary


def write_markdown(path: Path, meta: dict, results: dict, summary: dict) -> None:
    lines = [
        "# Update-step throughput: MISALoss vs CQLLoss",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']} ({meta['cpu']}, {meta['threads']} threads), "
        f"torch {meta['torch']}, load average at start {meta['loadavg']}  ",
        f"Settings: batch {meta['batch']}, hidden {meta['hidden']}-{meta['hidden']}, "
        f"obs {meta['obs_dim']} / act {meta['act_dim']}, k={meta['k']}, "
        f"burn-in {meta['burnin']}, {meta['leapfrog']} leapfrog steps",
        "",
        "| configuration | median step (ms) | updates/s | steps | warm-up (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['median_step_ms']:.1f} | {r['updates_per_s']:.2f} | "
            f"{r['steps']} | {r['warmup_s']:.1f} |"
        )
    lines += [
        "",
        "| MISA configuration | updates/s | step / CQL(10) | step / CQL(50) "
        "| step / compiled CQL(10) |",
        "|---|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for name, s in summary.items():
        r10 = s.get("step_ratio_vs_cql10", nan)
        r50 = s.get("step_ratio_vs_cql50", nan)
        rc = s.get("step_ratio_vs_cql10_compiled_update", nan)
        lines.append(
            f"| {name} | {s['updates_per_s']:.2f} | {r10:.2f} | {r50:.2f} | {rc:.2f} |"
        )
    lines += [
        "",
        f"Targets (2-core CPU): >= {TARGETS['min_updates_per_s']} updates/s, faster than "
        f"CQL(50), step <= {TARGETS['max_step_ratio_vs_cql10']}x CQL(10) "
        "(eager CQLLoss; CQL columns are eager unless named compiled).",
    ]
    if meta.get("note"):
        lines += ["", meta["note"]]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- agent groups
def make_group_update(
    group: AgentGroup, loss_keys, lrs, compile_update: bool, cudagraphs: bool = False
):
    """One update of every agent: vmapped losses, backward, Adam, Polyak targets.

    With ``cudagraphs`` the eager update is captured once in a CUDA graph
    (:class:`tensordict.nn.CudaGraphModule`) and replayed: the update reads
    no value back to the host, and its shapes are fixed.
    """
    optim = torch.optim.Adam(
        [{"params": group.parameters_of(name), "lr": lr} for name, lr in lrs.items()],
        capturable=cudagraphs,
    )

    def update(data):
        out = group(data)
        # agent i's loss reaches only agent i's parameters: the sum trains each
        total = sum(out[k] for k in loss_keys).sum()
        optim.zero_grad(set_to_none=False)
        total.backward()
        optim.step()
        group.update_targets(5e-3)
        return total.detach()

    if compile_update:
        # inductor lowers the HMC chain's scan to a loop reading its counter
        torch._dynamo.config.capture_scalar_outputs = True
        update = torch.compile(update)
    if cudagraphs:
        from tensordict.nn import CudaGraphModule

        update = CudaGraphModule(update, warmup=3)
    return update


def stack_batches(batches: list, n: int) -> list:
    """``len(batches)`` group batches ``[n, B]``, agent i's slice from its own draws."""
    return [
        torch.stack([batches[(j * n + i) % len(batches)] for i in range(n)])
        for j in range(len(batches))
    ]


def run_authors(args, hidden: int, k: int, steps: int) -> dict:
    """The authors' JAX update, in their environment; a ``skipped`` reason otherwise."""
    if not args.authors_dir or not (Path(args.authors_dir) / "algos").is_dir():
        return {"skipped": f"no authors' checkout at {args.authors_dir!r}"}
    if not args.jax_python or not Path(args.jax_python).exists():
        return {"skipped": f"no JAX interpreter at {args.jax_python!r}"}
    script = Path(__file__).resolve().parent / "bench_update_authors.py"
    cmd = [
        args.jax_python,
        str(script),
        f"--authors-dir={args.authors_dir}",
        f"--hidden={hidden}",
        f"--k={k}",
        f"--burnin={args.burnin}",
        f"--leapfrog={args.leapfrog}",
        f"--batch={args.batch}",
        f"--steps={steps}",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.authors_timeout
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"the authors' run took over {args.authors_timeout} s"}
    if proc.returncode:
        return {"skipped": "the authors' run failed: " + proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_agent_misa(args, hidden: int, k: int, device, **options) -> MISALoss:
    """MISA on the networks of one agent setting.

    ``args`` gives the observation and action sizes, the burn-in and the
    leapfrog steps; ``options`` go to :class:`MISALoss`.
    """
    actor, critic = make_networks(args.obs_dim, args.act_dim, hidden, device)
    return MISALoss(
        actor,
        critic,
        num_mcmc_samples=k,
        num_burnin=args.burnin,
        num_leapfrog=args.leapfrog,
        **options,
    )


def run_agents(args, device) -> dict:
    """Groups of N agents, MISA and CQL(10), eager and compiled, per setting."""
    keys = {"misa": MISA_KEYS, "cql10": CQL_KEYS, "iql": IQL_KEYS}
    results = {}
    for setting in args.settings:
        hidden, k = AGENT_SETTINGS[setting]
        steps = args.steps if setting == "small" else args.paper_steps

        def make_loss(algo=None, hidden=hidden, k=k, mode="eager"):
            if algo in MISA_ALGOS:
                # "misa": the group draws all agents' samples in one call
                # outside its vmap; in a compiled update the chain is inside
                # the graph as one scan (under CUDA graphs: the sampler's own
                # compiled transition, outside the graph, which a CUDA graph
                # captures); "misa_vmap_sampler": the sampler inside the vmap
                return make_agent_misa(
                    args,
                    hidden,
                    k,
                    device,
                    validate_inputs=False,
                    compile_sampler=algo == "misa" and mode == "compiled_cudagraph",
                )
            actor, critic = make_networks(args.obs_dim, args.act_dim, hidden, device)
            if algo == "iql":
                # Kostrikov et al.'s locomotion settings, as benchmarks/baselines.py
                value = make_value_network(args.obs_dim, hidden, device)
                loss = IQLLoss(
                    actor,
                    critic,
                    value,
                    loss_function="l2",
                    expectile=0.7,
                    temperature=3.0,
                )
            else:
                loss = CQLLoss(actor, critic, num_random=10, loss_function="l2")
            loss.make_value_estimator(gamma=0.99)
            return loss

        base = make_batches(8, args.batch, args.obs_dim, args.act_dim, device)
        algos = list(args.algorithms)
        if args.vmap_sampler and "misa" in algos:
            algos.insert(algos.index("misa") + 1, "misa_vmap_sampler")
        for algo in algos:
            eager, compiled = args.agents, args.compiled_agents
            if setting == "paper" and args.paper_agents is not None:
                eager = args.paper_agents
            if setting == "paper" and args.paper_compiled_agents is not None:
                compiled = args.paper_compiled_agents
            runs = [("eager", n) for n in eager]
            runs += [("compiled", n) for n in compiled]
            if args.cudagraphs:
                runs += [("cudagraph", n) for n in eager]
                runs += [("compiled_cudagraph", n) for n in compiled]
            for mode, n in runs:
                name = f"{setting}/{algo}/{mode}/{n}"
                where = {
                    "setting": setting,
                    "algorithm": algo,
                    "mode": mode,
                    "agents": n,
                }
                if mode.startswith("compiled"):
                    # each group's update recompiles the same code objects, and
                    # past dynamo's recompile limit (8) a compiled row would
                    # silently run eager: every row compiles afresh
                    torch._dynamo.reset()
                group = AgentGroup.from_factory(
                    lambda: make_loss(algo, mode=mode),
                    n,
                    seed=0,
                    batched_sampler=MISA_ALGOS.get(algo),
                )
                update = make_group_update(
                    group,
                    keys.get(algo, keys["misa"]),
                    IQL_LRS if algo == "iql" else LRS,
                    compile_update=mode.startswith("compiled"),
                    cudagraphs=mode.endswith("cudagraph"),
                )
                # compiled: dynamo compiles again on the first steps;
                # cudagraph: 3 eager warm-up calls, then the capture
                warmup = args.warmup + (3 if mode != "eager" else 0)
                try:
                    res = time_update(
                        update, stack_batches(base, n), steps, warmup, device
                    )
                except Exception as err:  # one configuration failing keeps the rest
                    results[name] = {
                        **where,
                        "failed": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc(),
                    }
                    print(f"{name:26s} failed: {results[name]['failed'][:300]}")
                    continue
                res.update(where, agent_updates_per_s=n * res["updates_per_s"])
                results[name] = res
                print(
                    f"{name:26s} {res['median_step_ms']:8.1f} ms/update  "
                    f"{res['agent_updates_per_s']:7.2f} agent-updates/s  "
                    f"({res['updates_per_s']:.2f} per agent, "
                    f"warm-up {res['warmup_s']:.1f} s)",
                    flush=True,
                )
        res = run_authors(args, hidden, k, steps)
        results[f"{setting}/authors_jax"] = {**res, "setting": setting}
        if "skipped" in res:
            print(f"{setting}/authors_jax: skipped ({res['skipped']})", flush=True)
        else:
            print(
                f"{setting}/authors_jax {res['median_step_ms']:8.1f} ms/update  "
                f"{res['updates_per_s']:7.2f} updates/s  "
                f"(warm-up {res['warmup_s']:.1f} s)",
                flush=True,
            )
    return results


def summarise_agents(results: dict) -> dict:
    """The target ratios, each within one compile mode; absent figures are skipped."""

    def rate(name):
        res = results.get(name, {})
        return res.get("agent_updates_per_s", res.get("updates_per_s"))

    summary = {}
    for mode in ("eager", "compiled"):
        # MISA's ratio has a target; the baselines' groups, named by suffix, none
        for algo, suffix in (("misa", ""), ("cql10", "_cql10"), ("iql", "_iql")):
            one, five = rate(f"small/{algo}/{mode}/1"), rate(f"small/{algo}/{mode}/5")
            if one and five:
                summary[f"small_5_agents_vs_1_{mode}{suffix}"] = five / one
    for setting in AGENT_SETTINGS:
        jax_rate = rate(f"{setting}/authors_jax")
        for mode in ("compiled", "cudagraph", "compiled_cudagraph"):
            best = max(
                (
                    r["agent_updates_per_s"]
                    for r in results.values()
                    if r.get("setting") == setting
                    and r.get("algorithm") == "misa"
                    and r.get("mode") == mode
                    and "agent_updates_per_s" in r
                ),
                default=None,
            )
            if jax_rate and best:
                summary[f"{setting}_{mode}_misa_vs_authors_jax"] = best / jax_rate
            single = rate(f"{setting}/misa/{mode}/1")
            if jax_rate and single:
                summary[f"{setting}_{mode}_misa_1_agent_vs_authors_jax"] = (
                    single / jax_rate
                )
    for mode in ("eager", "compiled", "cudagraph", "compiled_cudagraph"):
        one, ten = rate(f"paper/misa/{mode}/1"), rate(f"paper/misa/{mode}/10")
        if one and ten:
            summary[f"paper_10_agents_vs_1_{mode}"] = ten / one
            # the paper's run, 1.2M updates: 10 seeds side by side, or one seed
            summary[f"paper_hours_for_{PAPER_UPDATES}_updates_10_agents_{mode}"] = (
                PAPER_UPDATES / (ten / 10) / 3600
            )
            summary[f"paper_hours_for_{PAPER_UPDATES}_updates_1_agent_{mode}"] = (
                PAPER_UPDATES / one / 3600
            )
    for name, target in AGENT_TARGETS.items():
        if name in summary:
            summary[f"{name}_meets_{target}"] = summary[name] >= target
    return summary


def combine_repeats(runs: list[dict]) -> dict:
    """One row per configuration over repeated runs: the median of each figure.

    ``rate_range`` keeps the lowest and highest rate of the repeats; a
    configuration that failed (or was skipped) in any repeat is reported by
    that repeat's row.
    """
    combined = {}
    for name, first in runs[0].items():
        rows = [run[name] for run in runs if name in run]
        broken = [r for r in rows if "failed" in r or "skipped" in r]
        if broken:
            combined[name] = broken[0]
            continue
        row = dict(first)
        for key in _FIGURES:
            if key in first:
                row[key] = statistics.median(r[key] for r in rows)
        rate = (
            "agent_updates_per_s" if "agent_updates_per_s" in first else "updates_per_s"
        )
        row["rate_range"] = [min(r[rate] for r in rows), max(r[rate] for r in rows)]
        row["repeats"] = len(rows)
        combined[name] = row
    return combined


_FIGURES = (
    "median_step_ms",
    "mean_step_ms",
    "updates_per_s",
    "agent_updates_per_s",
    "warmup_s",
)


def summarise_repeats(runs: list[dict]) -> tuple[dict, dict]:
    """Each ratio's median over repeated runs, and its value in every run.

    A ratio is formed within one run (rows measured minutes apart), then the
    runs are summarised: with R independent runs, their lowest and highest
    values bracket the median ratio with probability 1 - 2 * 0.5**R (94% for
    R = 5). Targets are judged on the median.
    """
    per_run = [summarise_agents(run) for run in runs]
    summary, by_run = {}, {}
    for name, value in per_run[0].items():
        if isinstance(value, bool):
            continue
        values = [s[name] for s in per_run if name in s]
        summary[name] = statistics.median(values)
        by_run[name] = values
    for name, target in AGENT_TARGETS.items():
        if name in summary:
            summary[f"{name}_meets_{target}"] = summary[name] >= target
    return summary, by_run


def _rate(row: dict, key: str) -> str:
    """A row's rate, with its range over repeats when it was measured more than once."""
    text = f"{row[key]:.2f}"
    if row.get("repeats", 1) > 1:
        low, high = row["rate_range"]
        text += f" ({low:.2f} - {high:.2f})"
    return text


def write_agents_markdown(
    path: Path, meta: dict, results: dict, summary: dict, by_run: dict | None = None
):
    lines = [
        "# Update-step throughput of agent groups (N agents, one vmapped update)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']} ({meta['cpu']}, {meta['cpu_count']} cores, "
        f"{meta['threads']} threads), torch {meta['torch']}, load average at start "
        f"{meta['loadavg']}, at end {meta['loadavg_end']}  ",
        f"Batch {meta['batch']} per agent, obs {meta['obs_dim']} / act "
        f"{meta['act_dim']}, burn-in {meta['burnin']}, {meta['leapfrog']} leapfrog "
        "steps; small = 64-64, k = 10; paper = 256-256, k = 50.",
        "",
        "| setting | algorithm | mode | agents | ms / update | updates/s, all agents "
        "| updates/s per agent | warm-up (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if name.endswith("authors_jax"):
            if "skipped" in r:
                lines.append(
                    f"| {r['setting']} | authors' JAX | jit | 1 | skipped: "
                    f"{r['skipped']} | | | |"
                )
                continue
            lines.append(
                f"| {r['setting']} | authors' JAX | jit | 1 | "
                f"{r['median_step_ms']:.1f} | {_rate(r, 'updates_per_s')} | "
                f"{r['updates_per_s']:.2f} | {r['warmup_s']:.1f} |"
            )
            continue
        if "failed" in r:
            reason = r["failed"].replace("|", "/").replace("\n", " ")[:200]
            lines.append(
                f"| {r['setting']} | {r['algorithm']} | {r['mode']} | {r['agents']} "
                f"| failed: {reason} | | | |"
            )
            continue
        lines.append(
            f"| {r['setting']} | {r['algorithm']} | {r['mode']} | {r['agents']} | "
            f"{r['median_step_ms']:.1f} | {_rate(r, 'agent_updates_per_s')} | "
            f"{r['updates_per_s']:.2f} | {r['warmup_s']:.1f} |"
        )
    repeats = meta.get("repeats_done", 1)
    if repeats > 1:
        lines += [
            "",
            f"Every row was measured {repeats} times, in turn; the rows give the "
            "median of each figure. Each ratio is formed within one repeat; the "
            f"table gives its median, and its lowest and highest value, which "
            f"bracket the median with probability {1 - 2 * 0.5**repeats:.0%} if "
            "the repeats vary independently.",
            "",
            "| ratio | median | min - max | per repeat | target |",
            "|---|---:|---:|---|---:|",
        ]
    else:
        lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    for name, value in summary.items():
        if "_meets_" in name:
            continue
        target = AGENT_TARGETS.get(name)
        text = f">= {target}" if target else ""
        if name in GPU_TARGETS:
            text += " on a GPU"
        if repeats > 1:
            values = by_run[name]  # the repeats that gave this ratio
            each = ", ".join(f"{v:.2f}" for v in values)
            lines.append(
                f"| {name} | {value:.2f} | {min(values):.2f} - {max(values):.2f} "
                f"| {each} | {text} |"
            )
        else:
            lines.append(f"| {name} | {value:.2f} | {text} |")
    if meta.get("note"):
        lines += ["", meta["note"]]
    done, planned = meta.get("repeats_done"), meta.get("repeats")
    if done is not None and planned is not None and done < planned:
        lines += [
            "",
            f"**Partial: {done} of {planned} repeats done** (the run stopped, or "
            "is still going).",
        ]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile", action="store_true", help="add fully compiled updates"
    )
    parser.add_argument(
        "--cudagraphs", action="store_true", help="CUDA graphs (CUDA only)"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 steps, 2 warm-up steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--burnin", type=int, default=5)
    parser.add_argument("--leapfrog", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--agents", type=int, nargs="*", help="measure groups of these many agents"
    )
    parser.add_argument(
        "--paper-agents",
        type=int,
        nargs="*",
        default=None,
        help="eager agent counts at the paper setting (default: --agents)",
    )
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["misa", "cql10"],
        choices=["misa", "cql10", "iql"],
        help="agent-group algorithms measured (iql: TorchRL's IQLLoss, on request)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every agent row (and the authors' update) this many times, in "
        "turn, and report the median of each ratio with its min-max",
    )
    parser.add_argument(
        "--compiled-agents",
        type=int,
        nargs="*",
        default=[1, 5],
        help="agent counts also measured compiled (each compiles anew)",
    )
    parser.add_argument(
        "--paper-compiled-agents",
        type=int,
        nargs="*",
        default=None,
        help="compiled agent counts at the paper setting (default: --compiled-agents)",
    )
    parser.add_argument(
        "--settings", nargs="*", default=list(AGENT_SETTINGS), choices=AGENT_SETTINGS
    )
    parser.add_argument(
        "--vmap-sampler",
        action="store_true",
        help="also measure MISA groups with the sampler inside the vmap "
        "(AgentGroup(batched_sampler=False))",
    )
    parser.add_argument(
        "--paper-steps", type=int, default=10, help="timed steps at the paper setting"
    )
    parser.add_argument("--authors-dir", default=None, help="the authors' checkout")
    parser.add_argument(
        "--jax-python", default=None, help="interpreter of a JAX environment"
    )
    parser.add_argument(
        "--authors-timeout",
        type=float,
        default=900,
        help="seconds the authors' run may take per setting",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 3, 2
    device = torch.device(args.device)
    if args.cudagraphs and device.type != "cuda":
        parser.error("--cudagraphs needs --device cuda")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="No target network updater")
    if args.agents is not None:
        return main_agents(args, device, argv)

    batches = make_batches(8, args.batch, args.obs_dim, args.act_dim, device)
    results = {}
    for name, make, keys, compile_update, lrs in build_configs(args, device):
        loss = make()
        update = make_update(
            loss, keys, lrs, compile_update or args.cudagraphs, args.cudagraphs
        )
        warmup = args.warmup + (3 if (compile_update or "compiled" in name) else 0)
        res = time_update(update, batches, args.steps, warmup, device)
        results[name] = res
        print(
            f"{name:28s} {res['median_step_ms']:8.1f} ms/step  "
            f"{res['updates_per_s']:6.2f} updates/s  (warm-up {res['warmup_s']:.1f} s)",
            flush=True,
        )
    summary = summarise(results)
    for name, s in summary.items():
        ratios = "  ".join(
            f"{k}={v:.2f}" for k, v in s.items() if k.startswith("step_ratio")
        )
        print(f"{name}: {s['updates_per_s']:.2f} updates/s  {ratios}")

    meta = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": (
            str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
        ),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "batch": args.batch,
        "hidden": args.hidden,
        "obs_dim": args.obs_dim,
        "act_dim": args.act_dim,
        "k": args.k,
        "burnin": args.burnin,
        "leapfrog": args.leapfrog,
        "compile": args.compile,
        "cudagraphs": args.cudagraphs,
        "quick": args.quick,
        "note": args.note,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_update" + (f"_{args.tag}" if args.tag else "")
    payload = {"meta": meta, "targets": TARGETS, "results": results, "summary": summary}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(RESULTS / f"{stem}.md", meta, results, summary)
    print(f"wrote {RESULTS / stem}.json and .md")
    return payload


def _meta(args, device, argv) -> dict:
    return {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": (
            str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
        ),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "batch": args.batch,
        "obs_dim": args.obs_dim,
        "act_dim": args.act_dim,
        "burnin": args.burnin,
        "leapfrog": args.leapfrog,
        "agents": args.agents,
        "paper_agents": args.paper_agents,
        "algorithms": args.algorithms,
        "repeats": args.repeats,
        "compiled_agents": args.compiled_agents,
        "paper_compiled_agents": args.paper_compiled_agents,
        "settings": args.settings,
        "steps": args.steps,
        "paper_steps": args.paper_steps,
        "note": args.note,
    }


def main_agents(args, device, argv) -> dict:
    """Every agent row, ``args.repeats`` times; the files are rewritten after each
    repeat, so an interrupted run keeps the repeats it finished."""
    meta = _meta(args, device, argv)
    runs = []
    for repeat in range(args.repeats):
        if args.repeats > 1:
            print(f"-- repeat {repeat + 1} of {args.repeats}", flush=True)
        runs.append(run_agents(args, device))
        payload = write_agents_results(args, meta, runs)
    for name, value in payload["summary"].items():
        print(
            f"{name}: {value:.2f}"
            if not isinstance(value, bool)
            else f"{name}: {value}"
        )
    print(f"wrote {RESULTS / _agents_stem(args)}.json and .md")
    return payload


def _agents_stem(args) -> str:
    return "bench_update_agents" + (f"_{args.tag}" if args.tag else "")


def write_agents_results(args, meta: dict, runs: list[dict]) -> dict:
    """The json and markdown of the repeats done so far (each file replaced whole)."""
    meta = dict(meta, repeats_done=len(runs))
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = combine_repeats(runs)
    summary, by_run = summarise_repeats(runs)
    payload = {
        "meta": meta,
        "targets": AGENT_TARGETS,
        "results": results,
        "summary": summary,
    }
    if args.repeats > 1:
        payload["ratios_by_repeat"] = by_run
        payload["repeats"] = runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = str(RESULTS / _agents_stem(args))
    Path(f"{stem}.json.tmp").write_text(json.dumps(payload, indent=2) + "\n")
    write_agents_markdown(Path(f"{stem}.md.tmp"), meta, results, summary, by_run)
    for suffix in (".json", ".md"):
        os.replace(f"{stem}{suffix}.tmp", f"{stem}{suffix}")
    return payload


if __name__ == "__main__":
    main()
