"""Our MISA with the authors' network initialisation and log-std parameterisation.

The losses of our code and the authors' agree at fixed weights
(``test/test_parity_conformance.py``); what still differs between the two
learners is how the networks start and one detail of the policy:

* hidden layers: flax's default (truncated normal, variance ``1/fan_in``,
  zero bias) instead of torch's (uniform, variance ``1/(3 fan_in)``);
* last layers of actor and critics: variance scaling ``1e-2`` (uniform, zero
  bias); ours does this for the critics only;
* log-std ``m * raw + b`` with trainable ``m``, ``b`` (from 1 and -1) instead
  of the fixed ``raw - 1``.

These are the differences of the recipe up to commit f578c7b, since which it
starts as the authors' code by default. The probes patch the makers of commit
faa8e92's ``utils.py`` (``_ActorHead``, ``initialize_lazy``, ``MISALoss``) and
its setting names: run them from a checkout of that commit (see
``benchmarks/parity/README.md``).

(TorchRL's ensemble of critics redraws each critic's parameters uniformly
within the range of the module's; the critics are therefore initialised here
after the loss is built, each with its own draw, targets equal to them.)

This runs the reference script (``misa_offline.py``) with those three changes
patched into its makers, for the seeds given, and appends rows (method
``misa-authors-init``) to ``benchmarks/results/parity_<scale>.csv``::

    python benchmarks/parity/probe_init.py --seeds 0 1 2 3 4

``--variant`` picks another probe, each its own method name (``VARIANTS``):

* ``authors-init`` (the default): the three changes above, ``misa-authors-init``;
* ``authors-actor-init``: the actor's changes only (flax's init, the log-std
  scalars), the critics as ours, ``misa-authors-actor-init``;
* ``none``: the script as it is, ``misa-rerun``. The ``misa`` rows of
  ``learning_<scale>.csv`` were made over a day of changes to the package
  (data loading, the loss, the evaluation's seeding); this control runs the
  same code as the other probes, so that a probe's difference is its change.

Batches need no probe: ours, like the authors' (``np.random.randint``), are
drawn uniformly with replacement (TorchRL's ``RandomSampler``); nor does the
temperature: both start at ``alpha = 1`` and train ``log alpha`` with Adam at
the actor's rate (1e-4 here).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
SCRIPT_DIR = REPO / "sota-implementations" / "misa"
#: ``--variant`` -> (method name of its rows, what it changes in our recipe)
VARIANTS = {
    "authors-init": (
        "misa-authors-init",
        "flax's initialisation of actor and critics, trainable log-std scalars",
    ),
    "authors-actor-init": (
        "misa-authors-actor-init",
        "flax's initialisation of the actor only, trainable log-std scalars",
    ),
    "none": ("misa-rerun", "nothing: our recipe as is, rerun with the probes' code"),
}
# flax's lecun_normal: a normal truncated at 2 std, rescaled to variance 1/fan_in
_TRUNC_STD = 0.87962566103423978


def _authors_head():
    import torch
    from torch import nn

    class _Head(nn.Module):
        """Mean clipped to [-9, 9], log-std ``m * raw + b`` (trainable) clipped to [-5, 2]."""

        def __init__(self):
            super().__init__()
            self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
            self.log_std_offset = nn.Parameter(torch.tensor(-1.0))

        def forward(self, out):
            loc, raw = out.chunk(2, -1)
            log_std = self.log_std_multiplier * raw + self.log_std_offset
            return loc.clamp(-9.0, 9.0), log_std.clamp(-5.0, 2.0).exp()

    return _Head()


def _authors_init(module) -> None:
    """Flax's default init on hidden layers, variance scaling 1e-2 on the last one."""
    import torch
    from torch import nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linears):
            fan_in = layer.in_features
            if i == len(linears) - 1:
                bound = math.sqrt(3 * 1e-2 / fan_in)
                nn.init.uniform_(layer.weight, -bound, bound)
            else:
                std = math.sqrt(1.0 / fan_in) / _TRUNC_STD
                nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(layer.bias)


def run_script(overrides: list[str]) -> None:
    """One run of ``misa_offline.py`` with ``overrides``, in this process."""
    import runpy

    if str(SCRIPT_DIR) not in sys.path:  # the script imports its siblings
        sys.path.insert(0, str(SCRIPT_DIR))
    script = str(SCRIPT_DIR / "misa_offline.py")
    sys.argv = [script, *overrides]
    runpy.run_path(script, run_name="__main__")  # hydra finds config.yaml by its path


def run_patched(overrides: list[str], critics: bool = True) -> None:
    """One run of ``misa_offline.py`` with the authors' init and log-std head.

    ``critics=False``: the critics keep our initialisation.
    """
    sys.path.insert(0, str(SCRIPT_DIR))
    import copy

    import torch
    import utils
    from tensordict import TensorDict
    from torch import nn

    original_lazy, original_loss = utils.initialize_lazy, utils.MISALoss

    def initialize_lazy(modules, replay_buffer):
        original_lazy(modules, replay_buffer)  # lazy layers get their shapes first
        actor = modules[0]
        for seq in actor.modules():
            if (
                isinstance(seq, nn.Sequential)
                and type(seq[-1]).__name__ == "_ActorHead"
            ):
                seq[-1] = _authors_head()
        _authors_init(actor)

    def misa_loss(actor, critic, **kwargs):
        loss = original_loss(actor, critic, **kwargs)
        with torch.no_grad():
            for i in range(loss.num_qvalue_nets):
                member = copy.deepcopy(critic)
                _authors_init(member)
                for key, value in TensorDict.from_module(member).items(True, True):
                    loss.qvalue_network_params.get(key).data[i].copy_(value)
                    loss.target_qvalue_network_params.get(key).data[i].copy_(value)
        return loss

    utils.initialize_lazy = initialize_lazy
    if critics:
        utils.MISALoss = misa_loss
    run_script(overrides)


def run_variant(variant: str, overrides: list[str]) -> None:
    """One run of the script with ``variant``'s change (see ``VARIANTS``)."""
    if variant == "none":
        run_script(overrides)
    else:
        run_patched(overrides, critics=variant == "authors-init")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--scale", default="small")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="authors-init",
        help="the probe: what it changes in our recipe (see the module's docstring)",
    )
    parser.add_argument("--run", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run is not None:
        run_variant(args.variant, args.run)
        return
    method = VARIANTS[args.variant][0]
    sys.path.insert(0, str(REPO / "benchmarks"))
    import learning

    out_csv = args.out or learning.RESULTS / f"parity_{args.scale}.csv"
    for seed in args.seeds:
        job = learning.Job(args.scale, learning.DEMO, "misa", seed)
        name = job.name.replace("__misa__", f"__{method}__")
        if out_csv.exists() and name in learning.done_jobs(out_csv):
            print(f"{name} is already in {out_csv}: skipped.")
            continue
        run_dir = learning.RESULTS / "runs" / args.scale / name
        cmd = [sys.executable, str(HERE), "--variant", args.variant]
        cmd += ["--run", *job.overrides()]
        cmd += [f"hydra.run.dir={run_dir}", "logger.progress_bar=false"]
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {
            "scale": args.scale,
            "dataset": Path(job.dataset).stem,
            "method": method,
            "seed": seed,
            "steps": summary["steps"],
            "final_score": round(summary["final_score"], 3),
            "best_score": round(summary["best_score"], 3),
            "last_mean_score": round(summary["last_mean_score"], 3),
            "dataset_score": round(summary["dataset_score"], 3),
            "wall_s": round(time.perf_counter() - start, 1),
            "run_dir": str(run_dir.relative_to(REPO)),
        }
        new = not out_csv.exists()
        with out_csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=learning.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(
            f"{name}: final {row['final_score']}, last 5 {row['last_mean_score']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
