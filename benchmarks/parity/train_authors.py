"""Trains the authors' JAX MISA on a D4RL-layout file, with the reference script's data, settings and evaluation.

The learner is the authors' own (``algos.misa.MISA`` with their
``TanhGaussianPolicy`` and ``FullyConnectedQFunction``, from a checkout of
github.com/sail-sg/MISA given by ``--authors-dir`` or ``MISA_AUTHORS_DIR``).
What surrounds it is ours: the transitions and the evaluation protocol of
``misa_offline.py`` (see ``protocol.py``), and the settings, given with the
script's own names as ``key=value`` overrides of its ``config.yaml``::

    /work/jaxenv/bin/python benchmarks/parity/train_authors.py --authors-dir ../MISA \\
        preset=demo optim.gradient_steps=4000 logger.eval_iter=500 env.seed=0

A run writes, like ``benchmarks/learning.py`` for ours, one row (columns
``FIELDS``, method ``misa-authors-code``) to
``benchmarks/results/parity_<scale>.csv`` and a folder
``benchmarks/results/runs/<scale>/<dataset>__misa-authors-code__seed<k>`` with
``summary.json`` (the scores over steps), ``config.json`` (our settings and
the authors' config they map to) and csv logs of the training metrics. A run
already in the csv is skipped. Every ``checkpoint.interval`` updates (after that
step's evaluation, if any) the run saves its learner, random states, scores and
training time to ``<run folder>/checkpoint.pkl``; the same command then resumes
from it, exactly (the authors' JAX key chain is replayed to the saved step),
with the logs cut back to that step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import protocol  # noqa: E402
from authors import import_authors  # noqa: E402
from learning import FIELDS  # noqa: E402  (the learning benchmark's csv columns)

REPO = protocol.REPO
RESULTS = REPO / "benchmarks" / "results"
METHOD = "misa-authors-code"
CHECKPOINT = "checkpoint.pkl"


def authors_config(cfg: dict, action_dim: int) -> dict:
    """The authors' ``MISA`` config for the script's settings ``cfg``; refuses what it cannot express."""
    loss, optim, net = cfg["loss"], cfg["optim"], cfg["network"]
    unsupported = {
        "loss.mi_estimator": (loss["mi_estimator"], "misa"),
        "loss.bc_term": (loss["bc_term"], True),
        "loss.mi_critic": (loss["mi_critic"], False),
        "loss.num_qvalue_nets": (loss["num_qvalue_nets"], 2),
        "loss.num_chains": (loss["num_chains"], 1),
        "loss.num_adaptation_steps": (loss["num_adaptation_steps"], None),
        "loss.target_accept": (loss["target_accept"], 0.75),
        "loss.alpha_init": (loss["alpha_init"], 1.0),
        "loss.fixed_alpha": (loss["fixed_alpha"], False),
        "network.actor_activation": (net["actor_activation"], "relu"),
        # one learning rate for the policy and the temperature in their code
        "optim.alpha_lr": (float(optim["alpha_lr"]), float(optim["actor_lr"])),
    }
    if loss["num_policy_samples"] is not None:
        unsupported["loss.num_policy_samples"] = (
            loss["num_policy_samples"],
            loss["num_mcmc_samples"],
        )
    if loss["lagrange_tau"] is not None:
        unsupported["optim.alpha_prime_lr"] = (
            float(optim["alpha_prime_lr"]),
            float(optim["critic_lr"]),
        )
    bad = [
        f"{k}={v!r} (needs {need!r})"
        for k, (v, need) in unsupported.items()
        if v != need
    ]
    if not float(loss["step_size"]).is_integer():  # an int field of their config
        bad.append(f"loss.step_size={loss['step_size']!r} (needs a whole number)")
    if bad:
        raise SystemExit(
            "The authors' code cannot run these settings: " + ", ".join(bad) + "."
        )
    target_entropy = loss["target_entropy"]
    unbiased = loss["unbiased_correction"]
    return {
        "discount": float(loss["gamma"]),
        "policy_lr": float(optim["actor_lr"]),
        "qf_lr": float(optim["critic_lr"]),
        "soft_target_update_rate": float(loss["tau"]),
        "n_actions": int(loss["num_mcmc_samples"]),
        "min_q_weight": float(loss["min_q_weight"]),
        "bc_weight_misa": float(loss["bc_weight"]),
        "unbiased_grad": True if unbiased is None else bool(unbiased),
        "unbiased_weight": float(loss["unbiased_weight"]),
        "mcmc_burnin_steps": int(loss["num_burnin"]),
        "mcmc_num_leapfrog_steps": int(loss["num_leapfrog"]),
        "mcmc_step_size": int(loss["step_size"]),
        "backup_entropy": bool(loss["backup_entropy"]),
        "lagrange": loss["lagrange_tau"] is not None,
        "target_action_gap": float(loss["lagrange_tau"] or 0.0),
        "target_entropy": (
            -float(action_dim) if target_entropy == "auto" else float(target_entropy)
        ),
    }


def _arch(sizes) -> str:
    return "-".join(str(int(h)) for h in sizes)


class _ScalarLog:
    """Writes ``<dir>/scalars/<name>.csv`` lines ``step,value`` (TorchRL's CSVLogger layout)."""

    def __init__(self, root: Path):
        self.root = root / "scalars"

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            path = self.root / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"{step},{float(value)}\n")

    def truncate(self, step: int) -> None:
        """Drops the lines logged after ``step`` (a resumed run logs them again)."""
        for path in self.root.rglob("*.csv"):
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if int(float(line.split(",")[0])) <= step]
            if len(kept) != len(lines):
                path.write_text("".join(kept))


def save_checkpoint(path: Path, state: dict) -> None:
    """Pickles ``state`` to ``path`` all or nothing: a temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, settings: dict) -> dict | None:
    """The checkpoint at ``path`` (``None`` if there is none), made with ``settings``.

    Temporary files of interrupted saves are removed. A checkpoint that cannot
    be read, or that was made with other settings, stops the run with what to do.
    """
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            state = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise SystemExit(
            f"{path} cannot be read ({type(err).__name__}: {err}): delete it to "
            "start the run afresh."
        ) from None
    if _comparable(state["settings"]) != _comparable(settings):
        raise SystemExit(
            f"{path} was saved by a run with other settings: delete it to start "
            "the run afresh with these, or rerun with the saved ones."
        )
    return state


def _comparable(settings: dict) -> dict:
    """``settings`` with the dataset named by its file alone, as the run folder is.

    A clone of the repository at another path resumes the same run.
    """
    ours = settings["ours"]
    name = Path(ours["replay_buffer"]["dataset"]).name
    return {
        **settings,
        "ours": {**ours, "replay_buffer": {**ours["replay_buffer"], "dataset": name}},
    }


def done_runs(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {Path(row["run_dir"]).name for row in csv.DictReader(f)}


def train(
    cfg: dict,
    authors,
    run_dir: Path,
    ref_returns=None,
    env_id=None,
    eval_seeding: str = "per-evaluation",
) -> dict:
    """One training run of the authors' learner; returns the summary written to ``run_dir``.

    ``eval_seeding``: ``"per-evaluation"`` (the script's scheme) or ``"once"``
    (the script's scheme up to commit 45600be), see ``protocol.py``.
    """
    if eval_seeding not in protocol.EVAL_SEEDINGS:
        raise ValueError(f"eval_seeding must be one of {protocol.EVAL_SEEDINGS}.")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import serialization

    dataset = cfg["replay_buffer"]["dataset"]
    data, obs_norm = protocol.read_transitions(
        dataset,
        clip_actions=cfg["replay_buffer"]["clip_actions"],
        reward_processing=cfg["replay_buffer"]["reward_processing"],
        normalize_observations=cfg["replay_buffer"]["normalize_observations"],
    )
    meta = protocol.read_metadata(dataset)
    env_id = env_id or cfg["env"]["name"] or meta.get("env_id")
    if not env_id:
        raise SystemExit(
            f"{dataset} names no env (metadata/env_id): pass --env-id, e.g. HalfCheetah-v5."
        )
    low, high = ref_returns or protocol.reference_returns(dataset)
    dataset_score = float(
        np.mean(
            protocol.normalized_score(
                protocol.dataset_episode_returns(dataset), low, high
            )
        )
    )
    obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    config = authors_config(cfg, action_dim)

    # Seeding as the authors' main: numpy (batches), random, their JAX key chain.
    seed = int(cfg["env"]["seed"])
    np.random.seed(seed)
    random.seed(seed)
    authors.init_rng(seed)
    policy = authors.TanhGaussianPolicy(
        obs_dim,
        action_dim,
        _arch(cfg["network"]["actor_hidden_sizes"]),
        False,  # orthogonal_init, their default
        1.0,  # log_std multiplier, their default
        -1.0,  # log_std offset, their default
    )
    qf = authors.FullyConnectedQFunction(
        obs_dim,
        action_dim,
        _arch(cfg["network"]["critic_hidden_sizes"]),
        False,
        False,
        cfg["network"]["critic_activation"],
    )
    agent = authors.MISA(config, policy, qf)
    act_fn = jax.jit(
        lambda params, obs: policy.apply(
            params, jax.random.PRNGKey(0), obs, deterministic=True
        )[0]
    )
    once = eval_seeding == "once"
    envs = protocol.EvalEnvs(
        env_id,
        int(cfg["logger"]["eval_envs"]),
        obs_norm,
        seed=seed + protocol.EVAL_SEED_OFFSET if once else None,
    )

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "ours": cfg,
                "authors": config,
                "env_id": env_id,
                "eval_seeding": eval_seeding,
            },
            indent=1,
        )
    )
    log = _ScalarLog(run_dir / METHOD)
    n, batch_size = len(data["rewards"]), int(cfg["replay_buffer"]["batch_size"])
    total, interval = int(cfg["optim"]["gradient_steps"]), int(
        cfg["logger"]["eval_iter"]
    )
    log_interval = int(cfg["logger"]["log_interval"])
    every = int(cfg["checkpoint"]["interval"])
    scores, first, train_s = [], 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    settings = {"ours": cfg, "eval_seeding": eval_seeding, "env_id": env_id}
    resumed = None if once else load_checkpoint(ckpt_path, settings)
    if resumed is not None:
        first, scores, train_s = resumed["step"], resumed["scores"], resumed["train_s"]
        learner = serialization.from_bytes(_learner_state(agent), resumed["learner"])
        # their learner has no setter: its state goes back where __init__ put it
        agent._train_states = learner["train_states"]
        agent._target_qf_params = learner["target_qf_params"]
        agent._total_steps = first
        for _ in range(first):  # one key of their chain per update, as train() draws
            authors.next_rng()
        np.random.set_state(resumed["numpy_rng"])
        random.setstate(resumed["python_rng"])
        log.truncate(first)
        print(f"Resuming from {ckpt_path} (step {first})", flush=True)
    t_start, t_last, since = time.perf_counter(), time.perf_counter(), 0
    for step in range(first, total):
        idx = np.random.randint(n, size=batch_size)  # their RandSampler
        batch = {k: jnp.asarray(v[idx]) for k, v in data.items()}
        metrics = agent.train(batch)
        since += 1
        done = step + 1 == total
        if (step + 1) % log_interval == 0 or done:
            jax.block_until_ready(metrics)
            speed = since / (time.perf_counter() - t_last)
            t_last, since = time.perf_counter(), 0
            keys = (
                "policy_loss",
                "qf1_loss",
                "qf2_loss",
                "alpha_loss",
                "alpha",
                "log_pi",
            )
            train_log = {f"train/{k}": metrics[k] for k in keys}
            log.log({**train_log, "train/updates_per_s": speed}, step + 1)
        if (step + 1) % interval == 0 or done:
            params = agent.train_params["policy"]
            returns = envs.evaluate(
                lambda obs: np.asarray(act_fn(params, obs)),
                int(cfg["logger"]["eval_steps"]),
                seed=None if once else protocol.eval_seed(seed, step + 1),
            )
            score = float(np.mean(protocol.normalized_score(returns, low, high)))
            scores.append((step + 1, score))
            log.log(
                {"eval/return": returns.mean(), "eval/normalized_score": score},
                step + 1,
            )
            print(
                f"step {step + 1}: return {returns.mean():.1f}, normalised score {score:.1f}",
                flush=True,
            )
            t_last = time.perf_counter()  # evaluation time is not update time
        if (step + 1) % every == 0 and not done and not once:
            save_checkpoint(
                ckpt_path,
                {
                    "settings": settings,
                    "step": step + 1,
                    "scores": scores,
                    "train_s": train_s + time.perf_counter() - t_start,
                    "learner": serialization.to_bytes(_learner_state(agent)),
                    "numpy_rng": np.random.get_state(),
                    "python_rng": random.getstate(),
                },
            )
    envs.close()
    values = [s for _, s in scores]
    last = int(cfg["logger"]["eval_last"])
    summary = {
        "final_score": values[-1],
        "best_score": max(values),
        "last_mean_score": float(np.mean(values[-last:])),
        "dataset_score": dataset_score,
        "scores": scores,
        "steps": total,
        "algorithm": METHOD,
        # seconds of training over every process of the run (evaluations included)
        "train_s": train_s + time.perf_counter() - t_start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _learner_state(agent) -> dict:
    """What the authors' learner changes as it trains (its params, optimisers, targets)."""
    return {
        "train_states": agent.train_states,
        "target_qf_params": agent._target_qf_params,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "overrides", nargs="*", help="key=value settings of config.yaml"
    )
    parser.add_argument("--authors-dir", help="checkout of github.com/sail-sg/MISA")
    parser.add_argument(
        "--scale", default="small", help="label of the csv and run folders"
    )
    parser.add_argument(
        "--out", type=Path, help="results csv (default parity_<scale>.csv)"
    )
    parser.add_argument("--run-dir", type=Path, help="the run's folder")
    parser.add_argument(
        "--env-id", help="Gymnasium id when the file's metadata has none"
    )
    parser.add_argument(
        "--ref-returns",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="random and expert returns when the file's metadata has none",
    )
    parser.add_argument(
        "--eval-seeding",
        choices=protocol.EVAL_SEEDINGS,
        default="per-evaluation",
        help="the script's evaluation seeding; 'once': as up to commit 45600be",
    )
    parser.add_argument("--threads", type=int, default=1, help="XLA CPU threads")
    args = parser.parse_args(argv)

    if args.threads == 1:  # before JAX starts
        os.environ.setdefault(
            "XLA_FLAGS",
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        )
    authors = import_authors(args.authors_dir)
    cfg = protocol.load_config(args.overrides)
    dataset = Path(cfg["replay_buffer"]["dataset"])
    if not dataset.is_absolute():
        dataset = REPO / dataset
    cfg["replay_buffer"]["dataset"] = str(dataset)
    name = f"{dataset.stem}__{METHOD}__seed{cfg['env']['seed']}"
    out_csv = args.out or RESULTS / f"parity_{args.scale}.csv"
    if name in done_runs(out_csv):
        print(f"{name} is already in {out_csv}: skipped.")
        return
    run_dir = args.run_dir or RESULTS / "runs" / args.scale / name
    summary = train(
        cfg, authors, run_dir, args.ref_returns, args.env_id, args.eval_seeding
    )
    wall = summary["train_s"]
    try:  # as learning.py: relative to the repository (not resolved: runs/ may be a link)
        rel_dir = str(run_dir.absolute().relative_to(REPO))
    except ValueError:
        rel_dir = str(run_dir)
    row = {
        "scale": args.scale,
        "dataset": dataset.stem,
        "method": METHOD,
        "seed": cfg["env"]["seed"],
        "steps": summary["steps"],
        "final_score": round(summary["final_score"], 3),
        "best_score": round(summary["best_score"], 3),
        "last_mean_score": round(summary["last_mean_score"], 3),
        "dataset_score": round(summary["dataset_score"], 3),
        "wall_s": round(wall, 1),
        "run_dir": rel_dir,
    }
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    new = not out_csv.exists()
    with out_csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(
        f"final normalised score: {summary['final_score']:.1f} (best "
        f"{summary['best_score']:.1f}, mean of last evaluations "
        f"{summary['last_mean_score']:.1f}; dataset average {summary['dataset_score']:.1f}; "
        f"{wall:.0f} s)"
    )


if __name__ == "__main__":
    main()
