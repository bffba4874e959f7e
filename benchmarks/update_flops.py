"""Arithmetic of one update, and the most updates/s it allows on this CPU.

Records the matrix multiplies of one update of one agent (loss forward and
backward, MISA's HMC sampler included; Adam and the target update are
elementwise and small), with their FLOPs by the formulas of
:mod:`torch.utils.flop_counter`: MISA in our sampler mode and in the
authors' (``sampler_mode="authors"``: the arithmetic of their update, which
runs the same chains in action space), and CQL(10) / CQL(50), at the small
(64-64, k = 10) and paper (256-256, k = 50) settings of
``bench_update.py --agents``. Then it times each multiply by itself and sums:
the time an update's multiplies take on this machine with nothing else
around them, whatever the framework. A measured update cannot go below it
(up to cache effects), so a throughput target above its inverse needs less
arithmetic, not less overhead.

Writes ``benchmarks/results/update_flops[_<tag>].json`` and ``.md``. Run it
on a quiet machine: the multiplies' times are speeds.

Usage::

    python benchmarks/update_flops.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import (  # noqa: E402
    AGENT_SETTINGS,
    CQL_KEYS,
    LRS,
    MISA_KEYS,
    CQLLoss,
    RESULTS,
    make_agent_misa,
    make_batches,
    make_networks,
    make_update,
)

CONFIGS = ("misa", "misa_authors_sampler", "cql10", "cql50")


class MatmulLog(TorchDispatchMode):
    """Records the ops :mod:`torch.utils.flop_counter` has formulas for, with their FLOPs.

    ``FlopCounterMode`` itself also tracks modules by hash, which a
    ``TensorDictParams`` (it refuses ``bool()``) breaks.
    """

    def __init__(self):
        super().__init__()
        self.calls = Counter()  # (op, argument shapes) -> number of calls
        self.flops = Counter()  # (op, argument shapes) -> FLOPs of all its calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            key = (func, tuple(_shape(a) for a in args))
            self.calls[key] += 1
            self.flops[key] += formula(*args, **kwargs, out_val=out)
        return out


def _shape(arg):
    return tuple(arg.shape) if isinstance(arg, torch.Tensor) else arg


def op_seconds(func, shapes, repeats: int) -> float:
    """Median time of one call of ``func`` on random float32 tensors of ``shapes``."""
    args = [torch.randn(s) if isinstance(s, tuple) else s for s in shapes]
    for _ in range(2):
        func(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_loss(name: str, hidden: int, k: int, args):
    torch.manual_seed(0)
    if name.startswith("cql"):
        actor, critic = make_networks(
            args.obs_dim, args.act_dim, hidden, torch.device("cpu")
        )
        loss = CQLLoss(actor, critic, num_random=int(name[3:]), loss_function="l2")
        loss.make_value_estimator(gamma=0.99)
        return loss, CQL_KEYS
    mode = "authors" if name == "misa_authors_sampler" else "whitened"
    loss = make_agent_misa(args, hidden, k, torch.device("cpu"), sampler_mode=mode)
    return loss, MISA_KEYS


def record_update(name: str, hidden: int, k: int, args) -> MatmulLog:
    """The matrix multiplies of one update (the second: the first sets lazy state)."""
    loss, keys = make_loss(name, hidden, k, args)
    update = make_update(loss, keys, LRS, compile_update=False, cudagraphs=False)
    batches = make_batches(2, args.batch, args.obs_dim, args.act_dim, "cpu")
    update(batches[0].copy())
    with MatmulLog() as log:
        update(batches[1].copy())
    return log


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="*", default=list(AGENT_SETTINGS))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--burnin", type=int, default=5)
    parser.add_argument("--leapfrog", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timings per shape")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    for given, known in ((args.settings, AGENT_SETTINGS), (args.configs, CONFIGS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {unknown}: pick from {list(known)}")
    torch.set_num_threads(args.threads)

    rows, seconds = [], {}  # seconds: one call's median time per (op, shapes)
    for setting in args.settings:
        hidden, k = AGENT_SETTINGS[setting]
        for name in args.configs:
            log = record_update(name, hidden, k, args)
            for key in log.calls:
                if key not in seconds:
                    seconds[key] = op_seconds(*key, args.repeats)
            gflop = sum(log.flops.values()) / 1e9
            mm_s = sum(n * seconds[key] for key, n in log.calls.items())
            row = {
                "setting": setting,
                "config": name,
                "gflop_per_update": gflop,
                "matmul_calls": sum(log.calls.values()),
                "matmul_ms": 1e3 * mm_s,
                "matmul_gflop_per_s": gflop / mm_s,
                "max_updates_per_s": 1.0 / mm_s,
            }
            rows.append(row)
            print(
                f"{setting:>6} {name:<21} {gflop:7.2f} GFLOP in {row['matmul_calls']:4d} "
                f"matrix multiplies: {row['matmul_ms']:8.1f} ms alone "
                f"({row['matmul_gflop_per_s']:5.1f} GFLOP/s), at most "
                f"{row['max_updates_per_s']:7.2f} updates/s",
                flush=True,
            )
    meta = {
        "threads": args.threads,
        "torch": torch.__version__,
        "batch": args.batch,
        "obs_dim": args.obs_dim,
        "act_dim": args.act_dim,
        "burnin": args.burnin,
        "leapfrog": args.leapfrog,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    stem = "update_flops" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    lines = [
        "# Arithmetic of one update (`benchmarks/update_flops.py`)",
        "",
        f"Matrix multiplies of one update of one agent (loss forward and backward, "
        f"the sampler included): batch {args.batch}, obs {args.obs_dim} / act "
        f"{args.act_dim}, {args.burnin} burn-in and {args.leapfrog} leapfrog steps, "
        f"float32 on {args.threads} thread(s), torch {torch.__version__}. "
        "`ms alone`: the sum of each multiply's median time when run by itself, "
        "the time an update cannot go below on this machine; `max updates/s` is "
        "its inverse.",
        "",
        f"Command: `python benchmarks/update_flops.py {' '.join(meta['argv'])}`",
        "",
        "| setting | configuration | GFLOP / update | multiplies | ms alone "
        "| GFLOP/s | max updates/s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *[
            f"| {r['setting']} | {r['config']} | {r['gflop_per_update']:.2f} | "
            f"{r['matmul_calls']} | {r['matmul_ms']:.1f} | "
            f"{r['matmul_gflop_per_s']:.1f} | {r['max_updates_per_s']:.2f} |"
            for r in rows
        ],
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / stem}.md")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
