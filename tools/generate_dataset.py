"""Makes D4RL-style offline datasets on any Gymnasium task, from TorchRL parts.

A SAC agent (``behaviour_agent.SACAgent``: TorchRL's ``SACLoss`` on the MISA
training recipe's actor and critics) learns online through a TorchRL
``Collector`` that fills a replay buffer, for a fixed budget of
``--train-steps`` environment steps (one gradient step per environment step
after ``--init-random-steps`` uniform-random ones). Every ``--eval-every``
steps the policy is evaluated (deterministic actions, the recipe's
evaluation, seeded from the step) and saved in the recipe's checkpoint
format. Then, following D4RL's recipes:

* expert return ``R_expert``: the mean return of the agent at the end of the
  budget over ``--final-eval-episodes`` deterministic episodes;
* random return ``R_random``: the mean return of uniform random actions over
  ``--random-episodes`` episodes;
* ``medium`` policy: the first saved policy whose evaluation return reaches
  ``R_random + (R_expert - R_random) / 3`` (D4RL's "about a third of the
  expert", measured from the random level so it also works for negative
  returns such as Pendulum's);
* ``random`` / ``medium`` / ``expert``: ``--dataset-steps`` steps of the
  uniform-random / medium / final policy (stochastic actions, as D4RL),
  rounded up to whole episodes;
* ``medium-replay``: the replay buffer from the first step up to the end of
  the episode in which the medium policy was saved;
* ``medium-expert``: ``medium`` followed by ``expert``.

With ``--stop-at-return R`` the run is made as D4RL made its ``medium`` and
``medium-replay`` sets: training stops at the first evaluation whose return
is ``>= R``, and that policy is the medium policy. The episode in progress
is finished by that policy (no more gradient steps), so ``medium-replay`` is
the whole replay buffer of the stopped run. ``--train-steps`` is then a cap:
a run that never reaches ``R`` stops with an error and keeps its checkpoint,
so a rerun with a larger ``--train-steps`` continues it. No expert is
trained, so the ``expert`` and ``medium-expert`` recipes are refused, and
``--reference-returns RANDOM EXPERT`` must give the returns the normalised
scores use (e.g. D4RL's: Hopper -20.272305 3234.3, Walker2d 1.629008 4592.3,
HalfCheetah -280.178953 12135.0). ``R_random`` is still measured.

Files are written in D4RL's layout (``terminals`` = the env terminated,
``timeouts`` = cut by the time limit and not terminated) with ``metadata/*``:
``env_id``, ``task``, ``recipe``, ``seed``, ``random_return``,
``expert_return`` (``--reference-returns`` if given, else the measured ones;
``reference_returns`` says which: ``"given"`` or ``"measured"``, and
``measured_random_return`` / ``measured_expert_return`` keep what was
measured), ``dataset_return_mean``, ``dataset_episodes``, ``medium_step``,
``medium_return``, ``train_steps`` (steps trained), ``stop_at_return`` (when
set), ``policy_checkpoint``. Actions are those the policy sent, in
``[-1, 1]``; tasks with other bounds are rescaled by
:func:`~torchrl_misa.data.envs.make_env` (stored in
``metadata/env_action_low`` and ``env_action_high``).

The run is resumable: every ``--checkpoint-every`` steps the agent, optimiser,
replay buffer, evaluation history, random states and step are saved in
``<out>/checkpoints/<name>-seed<seed>/last.pt`` (the recipe's format: atomic,
sha256-checked); rerunning the same command goes on from there (the episode
in progress at the checkpoint is dropped and recollected). With
``--stop-at-return`` a checkpoint is also saved at the stopping evaluation
and once its episode is finished: a run interrupted after it reached ``R``
resumes without training and stops at that same evaluation.

Examples::

    python tools/generate_dataset.py --env Pendulum-v1 --recipes medium-replay \\
        --train-steps 20000 --out datasets/

    python tools/generate_dataset.py --env Hopper-v5 --recipes medium medium-replay \\
        --stop-at-return 1000 --reference-returns -20.272305 3234.3 \\
        --train-steps 300000 --out datasets/extra
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium
import numpy as np
import torch
from behaviour_agent import (
    episode_returns,
    eval_seed,
    load_checkpoint,
    load_policy,
    rng_state,
    SACAgent,
    SACConfig,
    save_checkpoint,
    save_policy,
    set_rng_state,
)
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs.utils import ExplorationType, RandomPolicy

from torchrl_misa.data.cache import open_cache, write_cache
from torchrl_misa.data.envs import make_env
from torchrl_misa.data.hdf5 import write_d4rl_hdf5
from torchrl_misa.data.scores import episode_returns_from_arrays

PROG = "python tools/generate_dataset.py"
#: the training checkpoint inside the run folder
STATE_FILE = "last.pt"

RECIPES = ("random", "medium", "medium-replay", "expert", "medium-expert")
D4RL_REFERENCE_HINT = (
    "Pass the task's reference returns, e.g. D4RL's: Hopper -20.272305 3234.3, "
    "Walker2d 1.629008 4592.3, HalfCheetah -280.178953 12135.0."
)
TRANSITION_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
)


@dataclass
class GenerateConfig:
    """Settings of :func:`generate` (the command-line flags, same names)."""

    env_id: str = "Pendulum-v1"
    recipes: tuple[str, ...] = ("medium-replay",)
    out: str = "datasets"
    name: str | None = None  # file stem; default: env id without version, lower case
    max_episode_steps: int | None = None  # time limit; default: the task's own
    seed: int = 0
    train_steps: int = 20_000
    init_random_steps: int = 1_000
    frames_per_batch: int = 200
    utd: float = 1.0
    eval_every: int = 1_000
    eval_episodes: int = 5
    final_eval_episodes: int = 10
    random_episodes: int = 100
    dataset_steps: int = 100_000
    checkpoint_every: int = 5_000
    medium_fraction: float = 1.0 / 3.0
    # stop training at the first evaluation whose return reaches it (D4RL's
    # medium-replay); None: train for the whole --train-steps budget
    stop_at_return: float | None = None
    # (random, expert) returns written in the files instead of the measured ones
    reference_returns: tuple[float, float] | None = None
    threads: int = 1
    version: str = "v0"
    overwrite: bool = False
    progress: bool = True
    sac: SACConfig = field(default_factory=SACConfig)

    @property
    def stem(self) -> str:
        if self.name:
            return self.name
        return re.sub(r"-v\d+$", "", self.env_id).lower().replace("_", "-")

    def dataset_path(self, recipe: str) -> Path:
        return Path(self.out) / f"{self.stem}-{recipe}-{self.version}.hdf5"

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / "checkpoints" / f"{self.stem}-seed{self.seed}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: GenerateConfig) -> None:
    """Refuses settings that cannot make a dataset, before anything runs.

    Raises:
        ValueError: naming the command-line flag and the rule it breaks.

    Examples:
        >>> check_config(GenerateConfig(train_steps=0))
        Traceback (most recent call last):
        ...
        ValueError: --train-steps must be a positive integer, got 0.
    """

    def fail(name, rule, value):
        raise ValueError(f"{_flag(name)} {rule}, got {value!r}.")

    positive_ints = (
        "train_steps",
        "frames_per_batch",
        "eval_every",
        "eval_episodes",
        "final_eval_episodes",
        "random_episodes",
        "dataset_steps",
        "checkpoint_every",
        "threads",
    )
    for name in positive_ints:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(name, "must be a positive integer", value)
    for name in ("seed", "init_random_steps"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(name, "must be an integer >= 0", value)
    steps = cfg.max_episode_steps
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        fail("max_episode_steps", "must be a positive integer (or left out)", steps)
    if cfg.init_random_steps >= cfg.train_steps:
        fail(
            "init_random_steps",
            f"must be smaller than --train-steps ({cfg.train_steps}) so that some "
            "gradient steps are made",
            cfg.init_random_steps,
        )
    for name in ("frames_per_batch", "eval_every"):
        if getattr(cfg, name) > cfg.train_steps:
            fail(
                name,
                f"must not exceed --train-steps ({cfg.train_steps})",
                getattr(cfg, name),
            )
    if not (math.isfinite(cfg.utd) and cfg.utd > 0):
        fail("utd", "(updates per env step) must be a finite number > 0", cfg.utd)
    if not (0 < cfg.medium_fraction <= 1):
        fail("medium_fraction", "must be in (0, 1]", cfg.medium_fraction)
    for name in ("hidden", "batch_size"):
        value = getattr(cfg.sac, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(name, "must be a positive integer", value)
    if not (math.isfinite(cfg.sac.lr) and cfg.sac.lr > 0):
        fail("lr", "must be a finite number > 0", cfg.sac.lr)
    if not (0 < cfg.sac.gamma <= 1):
        raise ValueError(f"SACConfig.gamma must be in (0, 1], got {cfg.sac.gamma!r}.")
    if not (0 <= cfg.sac.target_update_polyak < 1):
        raise ValueError(
            "SACConfig.target_update_polyak must be in [0, 1), got "
            f"{cfg.sac.target_update_polyak!r}."
        )
    for recipe in cfg.recipes:
        if recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {recipe!r}; choose from {RECIPES}.")
    refs = cfg.reference_returns
    if refs is not None:
        if len(refs) != 2 or not all(_is_finite_number(v) for v in refs):
            fail("reference_returns", "must be two finite numbers RANDOM EXPERT", refs)
        if not refs[1] > refs[0]:
            fail("reference_returns", "must have EXPERT > RANDOM", tuple(refs))
    stop = cfg.stop_at_return
    if stop is not None:
        if not _is_finite_number(stop):
            fail("stop_at_return", "must be a finite number (or left out)", stop)
        need_expert = [r for r in cfg.recipes if r in ("expert", "medium-expert")]
        if need_expert:
            raise ValueError(
                f"--recipes {' '.join(need_expert)} need the policy of a full "
                "training run, which --stop-at-return does not make: make them in "
                "a run without --stop-at-return (with another --out)."
            )
        if refs is None:
            raise ValueError(
                "--stop-at-return needs --reference-returns RANDOM EXPERT: a run "
                "stopped at the medium level has no expert to measure R_expert "
                f"from. {D4RL_REFERENCE_HINT}"
            )


def _is_finite_number(value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


# -- transitions -> D4RL arrays ---------------------------------------------
def to_d4rl_arrays(td: TensorDictBase) -> dict[str, np.ndarray]:
    """A flat TensorDict of transitions ``[N]`` as D4RL's arrays.

    ``terminals`` is ``("next", "terminated")``; ``timeouts`` is
    ``("next", "truncated")`` where not terminated.
    """
    terminated = td["next", "terminated"].reshape(-1).numpy().astype(bool)
    truncated = td["next", "truncated"].reshape(-1).numpy().astype(bool)
    return {
        "observations": td["observation"].numpy().astype(np.float32),
        "actions": td["action"].numpy().astype(np.float32),
        "rewards": td["next", "reward"].reshape(-1).numpy().astype(np.float32),
        "terminals": terminated,
        "timeouts": truncated & ~terminated,
        "next_observations": td["next", "observation"].numpy().astype(np.float32),
    }


def _cut_after_episode(td: TensorDictBase, min_steps: int) -> TensorDictBase:
    """``td[:k]`` with ``k >= min_steps`` the end of an episode (or all of ``td``)."""
    done = td["next", "done"].reshape(-1)
    ends = torch.nonzero(done[max(min_steps - 1, 0) :]).reshape(-1)
    if ends.numel() == 0:
        return td
    return td[: max(min_steps - 1, 0) + int(ends[0]) + 1]


def _last_episode_end(td: TensorDictBase) -> int:
    """Number of rows up to and including the last episode end (0 if none)."""
    ends = torch.nonzero(td["next", "done"].reshape(-1)).reshape(-1)
    return int(ends[-1]) + 1 if ends.numel() else 0


def collect_episodes(env_fn, policy, min_steps: int, seed: int) -> TensorDictBase:
    """At least ``min_steps`` transitions of ``policy`` (``None``: uniform random), whole episodes."""
    torch.manual_seed(seed)  # the policy's action noise
    env = env_fn()
    env.set_seed(seed)  # before the collector's first reset
    if policy is None:
        policy = RandomPolicy(env.action_spec)
    collector = Collector(
        env,
        policy,
        frames_per_batch=min(max(min_steps, 1), 1000),
        total_frames=-1,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )
    chunks, count = [], 0
    try:
        for batch in collector:
            batch = batch.reshape(-1).select(*TRANSITION_KEYS)
            chunks.append(batch.clone())
            count += batch.numel()
            if count >= min_steps and bool(batch["next", "done"].any()):
                data = torch.cat(chunks, 0)
                cut = _cut_after_episode(data, min_steps)
                if bool(cut["next", "done"][-1]):
                    return cut
    finally:
        collector.shutdown()
    raise RuntimeError("unreachable")  # pragma: no cover


# -- checkpoints (the recipe's format) ------------------------------------
def _save_state(run_dir: Path, agent: SACAgent, rb, state: dict) -> None:
    buffer = rb.storage[:].clone().to_dict() if len(rb) else None
    save_checkpoint(
        run_dir / STATE_FILE,
        {
            "agent": agent.state(),
            "rng": rng_state(),
            "buffer": buffer,
            "buffer_rows": len(rb),
            **state,
        },
    )


def _load_state(run_dir: Path):
    """The saved training state and buffer, or ``(None, None)`` for a new run."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return None, None
    state = load_checkpoint(path)
    buffer = state.pop("buffer")
    if buffer is not None:
        buffer = TensorDict(buffer, batch_size=[state["buffer_rows"]])
    return state, buffer


def _policy_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"policy_step{step:08d}.pt"


def _save_policy(run_dir: Path, agent: SACAgent, step: int, ret: float, cfg) -> Path:
    return save_policy(
        _policy_path(run_dir, step),
        agent.actor,
        env_id=cfg.env_id,
        hidden=cfg.sac.hidden,
        step=step,
        eval_return=ret,
    )


def load_behaviour_policy(path: str | Path, env=None):
    """The actor saved by the generator at ``path`` (a ``ProbabilisticActor``)."""
    if env is None:
        env = make_env(load_checkpoint(path)["env_id"])
    return load_policy(path, env)


def _first_reaching(evals, threshold: float | None):
    """The first ``(step, return)`` of ``evals`` with return ``>= threshold``, or None."""
    if threshold is None:
        return None
    return next(((s, r) for s, r in evals if r >= threshold), None)


def _finish_episode(batches, rb, step: int, stop_step: int, pbar=None) -> int:
    """Extends ``rb`` from ``batches`` up to an episode end at or after ``stop_step``.

    Returns the new step (rows in ``rb``); no gradient steps are made.
    """
    done = step > 0 and bool(rb.storage[step - 1]["next", "done"].any())
    while step < stop_step or not done:
        batch = next(batches).reshape(-1).select(*TRANSITION_KEYS)
        batch = _cut_after_episode(batch, stop_step - step)
        rb.extend(batch)
        step += batch.numel()
        done = bool(batch["next", "done"][-1])
        if pbar is not None:
            pbar.update(batch.numel())
    return step


# -- the two stages ---------------------------------------------------------
def train(cfg: GenerateConfig, log=print) -> dict:
    """Trains the behaviour agent (resumable); returns the run summary.

    Raises:
        SystemExit: with ``--stop-at-return``, when no evaluation reached it
            within ``--train-steps`` (the checkpoint is kept for a rerun); a
            checkpoint past ``--train-steps``.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if cfg.stop_at_return is None:
            same = summary.get("train_steps") == cfg.train_steps
        else:  # stopped within the cap
            same = summary["medium_step"] <= cfg.train_steps
        if same and summary.get("stop_at_return") == cfg.stop_at_return:
            log(f"training already done: {summary_path}")
            return summary

    torch.manual_seed(cfg.seed)
    env = _make_env(cfg, seed=cfg.seed)
    eval_env = _make_env(cfg)  # seeded by each evaluation
    base_seed = cfg.seed + 10_000  # of the evaluations
    max_steps = _max_episode_steps(cfg)
    stopping = cfg.stop_at_return is not None
    agent = SACAgent(env, cfg.sac)
    keep, evals, train_time, stop = 0, [], 0.0, None
    state, buffer = _load_state(run_dir)
    if state is not None:
        agent.load_state(state["agent"])
        set_rng_state(state["rng"])
        within_cap = [e for e in state["evals"] if e[0] <= cfg.train_steps]
        stop = _first_reaching(within_cap, cfg.stop_at_return)
        if stop is None:
            # the episode in progress at the checkpoint cannot be resumed: drop it
            keep = _last_episode_end(buffer) if buffer is not None else 0
            evals = [e for e in state["evals"] if e[0] <= keep]
        else:
            # R was reached before the interruption: no more training. Keep the
            # buffer up to the end of that episode, or drop the unfinished
            # episode and finish it with the stopped policy
            cut = _cut_after_episode(buffer, stop[0])
            done = bool(cut["next", "done"][-1])
            keep = cut.numel() if done else _last_episode_end(buffer)
            evals = [e for e in state["evals"] if e[0] <= stop[0]]
            medium = load_checkpoint(_policy_path(run_dir, stop[0]))
            agent.actor.load_state_dict(medium["actor"])
        if stop is None and keep > cfg.train_steps:
            raise SystemExit(
                f"The checkpoint {run_dir / STATE_FILE} is at step {keep}, past "
                f"--train-steps {cfg.train_steps}: pass --train-steps {keep} or "
                f"more, or delete {run_dir} to start again."
            )
        train_time = state.get("train_time", 0.0)
    # a stopped run finishes its last episode, up to max_steps past the cap
    capacity = max(cfg.train_steps, keep) + (max_steps if stopping else 0)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), batch_size=cfg.sac.batch_size
    )
    if keep:
        rb.extend(buffer[:keep])
    step = keep
    if state is not None:
        log(f"resuming {run_dir} at step {step}")

    def save(at_step):
        _save_state(
            run_dir,
            agent,
            rb,
            {
                "step": at_step,
                "evals": evals,
                "train_time": train_time + time.perf_counter() - t0,
            },
        )

    collector = Collector(
        env,
        agent.actor,
        frames_per_batch=cfg.frames_per_batch,
        # a stopped run may collect past the cap to finish its episode
        total_frames=-1 if stopping else cfg.train_steps - step,
        init_random_frames=max(cfg.init_random_steps - step, 0),
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )
    collector.set_seed(cfg.seed + step)
    batches = iter(collector)
    pbar = _progress(cfg, total=cfg.train_steps, initial=step)
    next_eval = (step // cfg.eval_every + 1) * cfg.eval_every
    next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    t0 = time.perf_counter()
    # a run resumed after it reached --stop-at-return trains no more
    for batch in batches if stop is None else ():
        batch = batch.reshape(-1).select(*TRANSITION_KEYS)
        # after a resume the collector may round its budget up: never wrap the buffer
        batch = batch[: cfg.train_steps - step]
        if not batch.numel():
            break
        rb.extend(batch)
        step += batch.numel()
        if step > cfg.init_random_steps:
            for _ in range(int(math.ceil(batch.numel() * cfg.utd))):
                agent.update(rb.sample())
        if pbar is not None:
            pbar.update(batch.numel())
        if step >= next_eval or step >= cfg.train_steps:
            ret = float(
                np.mean(
                    episode_returns(
                        eval_env,
                        agent.actor,
                        cfg.eval_episodes,
                        max_steps,
                        seed=eval_seed(base_seed, step),
                    )
                )
            )
            _save_policy(run_dir, agent, step, ret, cfg)
            evals.append((step, ret))
            next_eval = (step // cfg.eval_every + 1) * cfg.eval_every
            if pbar is not None:
                pbar.set_postfix(eval_return=f"{ret:.1f}")
            stop = _first_reaching([(step, ret)], cfg.stop_at_return)
            if stop is not None:
                save(step)  # an interrupted run resumes at this stop
                break
        if step >= next_ckpt and step < cfg.train_steps:
            save(step)
            next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        if step >= cfg.train_steps:
            break
    if stop is not None:
        # D4RL's medium-replay ends with the episode in progress at the stop
        before = step
        step = _finish_episode(batches, rb, step, stop[0], pbar)
        if step != before:
            save(step)  # so that a resumed run keeps this very episode
    elif stopping:
        save(step)  # a rerun with a larger --train-steps continues from here
    collector.shutdown()
    if pbar is not None:
        pbar.close()
    train_time += time.perf_counter() - t0
    if stopping and stop is None:
        best = max(evals, key=lambda e: e[1])
        raise SystemExit(
            f"No evaluation reached --stop-at-return {cfg.stop_at_return:g} within "
            f"--train-steps {cfg.train_steps}: the best return was {best[1]:.1f} "
            f"(step {best[0]}). Pass a larger --train-steps (the run continues "
            f"from {run_dir / STATE_FILE}) or a lower --stop-at-return."
        )

    t1 = time.perf_counter()
    if not stopping:
        final_returns = episode_returns(
            eval_env,
            agent.actor,
            cfg.final_eval_episodes,
            max_steps,
            seed=eval_seed(base_seed, step),
        )
    random_returns = episode_returns(
        eval_env, None, cfg.random_episodes, max_steps, seed=base_seed + 1
    )
    random = float(np.mean(random_returns))
    if stopping:
        # no expert: the files take their references from --reference-returns
        expert = expert_std = expert_path = None
        threshold, medium, trained = cfg.stop_at_return, stop, stop[0]
    else:
        expert = float(np.mean(final_returns))
        expert_std = float(np.std(final_returns))
        expert_path = str(_save_policy(run_dir, agent, step, expert, cfg))
        if not expert > random:
            raise RuntimeError(
                f"The agent did not beat the random policy on {cfg.env_id} "
                f"({expert:.1f} vs {random:.1f}) after {cfg.train_steps} steps: raise "
                "--train-steps."
            )
        threshold = random + cfg.medium_fraction * (expert - random)
        medium, trained = _first_reaching(evals, threshold), cfg.train_steps
        if medium is None:
            raise RuntimeError(
                f"No saved policy reached the medium level {threshold:.1f}; "
                f"evaluations: {evals}. Raise --train-steps or lower --eval-every."
            )
    # atomic and checked, as the data layer's dataset caches
    write_cache(run_dir / "training_buffer", rb.storage[:], rows=len(rb))
    summary = {
        "env_id": cfg.env_id,
        "seed": cfg.seed,
        "train_steps": trained,
        "stop_at_return": cfg.stop_at_return,
        "train_time_s": train_time,
        "final_eval_time_s": time.perf_counter() - t1,
        "expert_return": expert,
        "expert_return_std": expert_std,
        "random_return": random,
        "random_return_std": float(np.std(random_returns)),
        "medium_threshold": threshold,
        "medium_step": medium[0],
        "medium_return": medium[1],
        "medium_checkpoint": str(_policy_path(run_dir, medium[0])),
        "expert_checkpoint": expert_path,
        "buffer_rows": len(rb),
        "max_episode_steps": max_steps,
        "evals": evals,
        "env_action_low": env.base_env.action_spec.space.low.tolist(),
        "env_action_high": env.base_env.action_spec.space.high.tolist(),
        "config": {k: v for k, v in asdict(cfg).items() if k != "sac"},
        "sac": asdict(cfg.sac),
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    if stopping:
        log(
            f"stopped at step {medium[0]} (evaluation return {medium[1]:.1f} >= "
            f"{threshold:g}) after {train_time:.0f}s, {len(rb)} transitions in the "
            f"buffer; random {random:.1f}"
        )
    else:
        log(
            f"trained {cfg.train_steps} steps in {train_time:.0f}s: expert "
            f"{expert:.1f}, random {random:.1f}, medium {medium[1]:.1f} at step "
            f"{medium[0]}"
        )
    return summary


def make_recipe(cfg: GenerateConfig, recipe: str, summary: dict) -> TensorDictBase:
    """The transitions of ``recipe`` (see the module docstring)."""
    run_dir = cfg.run_dir
    env_fn = lambda: _make_env(cfg)  # noqa: E731
    seed = cfg.seed + 1000 * (RECIPES.index(recipe) + 1)
    if recipe == "medium-replay":
        data = open_cache(run_dir / "training_buffer")
        return _cut_after_episode(data, summary["medium_step"]).clone()
    if recipe == "random":
        return collect_episodes(env_fn, None, cfg.dataset_steps, seed)
    if recipe in ("medium", "expert"):
        policy = load_behaviour_policy(summary[f"{recipe}_checkpoint"], env_fn())
        return collect_episodes(env_fn, policy, cfg.dataset_steps, seed)
    if recipe == "medium-expert":
        parts = [make_recipe(cfg, r, summary) for r in ("medium", "expert")]
        return torch.cat(parts, 0)
    raise ValueError(f"Unknown recipe {recipe!r}; choose from {RECIPES}.")


def generate(cfg: GenerateConfig, log=print) -> dict[str, Path]:
    """Trains (or resumes) the behaviour agent and writes one file per recipe.

    Raises:
        ValueError: a setting that cannot work (:func:`check_config`).
        SystemExit: ``--stop-at-return`` not reached within ``--train-steps``,
            or a checkpoint past ``--train-steps`` (:func:`train`).
    """
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    summary = train(cfg, log)
    if cfg.reference_returns is not None:
        random_ref, expert_ref = map(float, cfg.reference_returns)
        reference = "given"
    else:
        random_ref, expert_ref = summary["random_return"], summary["expert_return"]
        reference = "measured"
    written = {}
    for recipe in cfg.recipes:
        path = cfg.dataset_path(recipe)
        if path.exists() and not cfg.overwrite:
            log(f"{path} exists, kept (pass --overwrite to remake it)")
            written[recipe] = path
            continue
        t0 = time.perf_counter()
        data = make_recipe(cfg, recipe, summary)
        arrays = to_d4rl_arrays(data)
        returns = episode_returns_from_arrays(
            arrays["rewards"], arrays["terminals"] | arrays["timeouts"]
        )
        medium, expert = summary["medium_checkpoint"], summary["expert_checkpoint"]
        checkpoint = {
            "random": None,
            "medium": medium,
            "medium-replay": medium,
            "expert": expert,
            "medium-expert": f"{medium};{expert}",
        }[recipe]
        metadata = {
            "env_id": cfg.env_id,
            "task": cfg.stem,
            "recipe": recipe,
            "seed": cfg.seed,
            "random_return": random_ref,
            "expert_return": expert_ref,
            "reference_returns": reference,
            "measured_random_return": summary["random_return"],
            "measured_expert_return": summary["expert_return"],  # None: not written
            "dataset_return_mean": float(returns.mean()),
            "dataset_episodes": int(returns.size),
            "medium_step": summary["medium_step"],
            "medium_return": summary["medium_return"],
            "train_steps": summary["train_steps"],
            "stop_at_return": summary.get("stop_at_return"),
            "train_time_s": summary["train_time_s"],
            "policy_checkpoint": checkpoint,
            "env_action_low": np.asarray(summary["env_action_low"], np.float32),
            "env_action_high": np.asarray(summary["env_action_high"], np.float32),
            "generator": "tools/generate_dataset.py",
            "generator_config": json.dumps(summary["config"]),
        }
        write_d4rl_hdf5(path, arrays, metadata)
        log(
            f"wrote {path}: {len(arrays['rewards'])} transitions, {returns.size} episodes, "
            f"mean return {returns.mean():.1f} ({time.perf_counter() - t0:.1f}s)"
        )
        written[recipe] = path
    return written


def _make_env(cfg: GenerateConfig, seed: int | None = None):
    kwargs = {}
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return make_env(cfg.env_id, seed=seed, **kwargs)


def _max_episode_steps(cfg: GenerateConfig) -> int:
    """The time limit of the episodes: ``--max-episode-steps`` or the task's own."""
    if cfg.max_episode_steps is not None:
        return cfg.max_episode_steps
    return int(gymnasium.spec(cfg.env_id).max_episode_steps or 1000)


def _progress(cfg, total, initial):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"SAC on {cfg.env_id}", unit="step")


def parse_args(argv=None) -> GenerateConfig:
    """Command-line flags to a :class:`GenerateConfig`; bad settings exit as argparse does."""
    d = GenerateConfig()
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--env", dest="env_id", default=d.env_id, help="Gymnasium id")
    p.add_argument("--recipes", nargs="+", default=list(d.recipes), choices=RECIPES)
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--name", default=None, help="file stem (default from the env id)")
    for key in (
        "seed",
        "max_episode_steps",
        "train_steps",
        "init_random_steps",
        "frames_per_batch",
        "eval_every",
        "eval_episodes",
        "final_eval_episodes",
        "random_episodes",
        "dataset_steps",
        "checkpoint_every",
        "threads",
    ):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(d, key))
    p.add_argument("--utd", type=float, default=d.utd, help="updates per env step")
    p.add_argument(
        "--medium-fraction",
        type=float,
        default=d.medium_fraction,
        help="medium level between R_random and R_expert (without --stop-at-return)",
    )
    p.add_argument(
        "--stop-at-return",
        type=float,
        default=None,
        metavar="R",
        help="stop training at the first evaluation with return >= R: that policy "
        "is the medium one and the replay buffer up to the end of its episode is "
        "medium-replay (as D4RL); --train-steps is then the cap. Needs "
        "--reference-returns; refuses the expert and medium-expert recipes",
    )
    p.add_argument(
        "--reference-returns",
        type=float,
        nargs=2,
        default=None,
        metavar=("RANDOM", "EXPERT"),
        help="the random and expert returns written in the files (normalised "
        "scores) instead of the measured ones; D4RL's: Hopper -20.272305 3234.3, "
        "Walker2d 1.629008 4592.3, HalfCheetah -280.178953 12135.0",
    )
    p.add_argument("--hidden", type=int, default=d.sac.hidden)
    p.add_argument("--batch-size", type=int, default=d.sac.batch_size)
    p.add_argument("--lr", type=float, default=d.sac.lr)
    p.add_argument("--version", default=d.version, help="file name suffix")
    p.add_argument("--overwrite", action="store_true", help="remake existing files")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = vars(p.parse_args(argv))
    sac = SACConfig(
        hidden=args.pop("hidden"), batch_size=args.pop("batch_size"), lr=args.pop("lr")
    )
    args["recipes"] = tuple(args["recipes"])
    if args["reference_returns"] is not None:
        args["reference_returns"] = tuple(args["reference_returns"])
    cfg = GenerateConfig(sac=sac, **args)
    try:
        check_config(cfg)
    except ValueError as err:
        p.error(str(err))  # usage line and message, exit status 2
    return cfg


def main(argv=None) -> None:
    generate(parse_args(argv))


if __name__ == "__main__":
    main()
