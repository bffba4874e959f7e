"""MISA: Mutual Information Regularized Offline RL (https://arxiv.org/abs/2210.07484).

    python sota-implementations/misa/misa_offline.py                 # halfcheetah-medium-v2
    python sota-implementations/misa/misa_offline.py preset=demo     # shipped dataset, CPU, minutes
    python sota-implementations/misa/misa_offline.py loss.mi_estimator=dv   # an ablation
    python sota-implementations/misa/misa_offline.py preset=demo num_agents=5  # seeds 0-4, one process

Every option is in ``config.yaml``; presets per task family in ``preset/``. A
run whose checkpoint folder already holds a checkpoint continues it: rerunning
a command with a fixed ``hydra.run.dir`` (a requeued job) loses no progress.
The makers are in ``utils.py``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
import tqdm
from checkpoint import (
    check_folder_writable,
    check_same_dataset,
    check_space,
    checkpoint_nbytes,
    CHECKPOINT_NAME,
    CheckpointError,
    DeferredPreemption,
    drop_logged_after,
    remove_stale_temporaries,
    resume_state,
    run_lock,
    save_checkpoint,
)
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from online_phase import OnlinePhase
from torchrl._utils import logger as torchrl_logger, timeit
from torchrl.record.loggers import CSVLogger
from utils import (
    capture_update,
    compile_update,
    ConfigError,
    eval_seed,
    evaluate,
    log_metrics,
    make_environment,
    make_logger,
    make_misa_update,
    make_offline_data,
    rng_state,
    seed_everything,
    set_rng_state,
    set_threads,
    update_step,
    validate_config,
)

from torchrl_misa.data import (
    content_sha256,
    dataset_average_normalized_score,
    normalized_score,
)


def pickle_recipe_by_value() -> None:
    """Lets hydra's submitit launchers (``submitit_local``, ``submitit_slurm``) ship the job.

    A submitit job unpickles ``main`` in a fresh interpreter, on a cluster node
    too, where this folder is not importable: the recipe's modules import each
    other by name, as TorchRL's recipes do. cloudpickle, which submitit pickles
    with, then carries their code by value, not by name. A no-op without it.
    """
    try:
        import cloudpickle
    except ImportError:
        return
    for name in ("utils", "checkpoint", "online_phase", __name__):
        if name != "__main__":  # cloudpickle ships __main__ by value anyway
            cloudpickle.register_pickle_by_value(sys.modules[name])


pickle_recipe_by_value()


@hydra.main(version_base="1.2", config_path="", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(str(err)) from None


def train(
    cfg: DictConfig, out_dir: Path, make_update=make_misa_update, name: str = "misa"
) -> dict:
    """Trains ``cfg.num_agents`` agents; writes checkpoints and ``out_dir/summary.json``.

    ``make_update(cfg, data, action_dim, device)`` builds the update
    (:func:`utils.make_misa_update` here; the learning benchmark passes its
    baselines'). A run whose checkpoint folder already holds a checkpoint
    continues it (a requeued job finds its progress); ``resume=<file or
    folder>`` continues another run's. A checkpoint that cannot be saved stops
    the run with the previous one intact. The run holds a lock on its
    checkpoint folder: a second run there is refused at start.
    """
    validate_config(cfg)
    ckpt_path = Path(cfg.checkpoint.dir or out_dir / "checkpoints") / CHECKPOINT_NAME
    check_folder_writable(ckpt_path.parent)
    with run_lock(ckpt_path.parent):
        return _train(cfg, out_dir, ckpt_path, make_update, name)


def _train(
    cfg: DictConfig, out_dir: Path, ckpt_path: Path, make_update, name: str
) -> dict:
    """:func:`train` once the checkpoint folder is locked."""
    remove_stale_temporaries(ckpt_path)
    config = OmegaConf.to_container(cfg, resolve=True)
    resumed = resume_state(cfg.resume, ckpt_path, config)
    device = torch.device(
        cfg.optim.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    set_threads(cfg.optim.num_threads)
    seed_everything(cfg.env.seed)
    num_agents = cfg.num_agents

    # Create replay buffer
    data = make_offline_data(cfg, device)
    replay_buffer = data.replay_buffer
    # the transitions' fingerprint: a resumed run must see the data it was trained on
    dataset_sha256 = content_sha256(replay_buffer.storage[:])
    if resumed is not None:
        check_same_dataset(
            resumed, dataset_sha256, cfg.replay_buffer.dataset, resumed["path"]
        )
    action_dim = replay_buffer.sample()["action"].shape[-1]

    # Create agents: networks, loss, optimisers, target-network updates
    recipe = make_update(cfg, data, action_dim, device)
    start, scores, run_id = 0, [], uuid.uuid4().hex
    # seconds spent on the run before this process, up to its last checkpoint
    train_s_before = 0.0
    if resumed is not None:
        recipe.load_state_dict(resumed["recipe"])
        start, scores, run_id = resumed["step"], resumed["scores"], resumed["run_id"]
        train_s_before = resumed.get("train_s", 0.0)
        set_rng_state(resumed["rng"])
    online = OnlinePhase(cfg, data, recipe, device) if cfg.online.frames else None
    if online is not None and resumed is not None and start > _switch(resumed):
        online.load_state_dict(resumed["online"])  # past the switch: its progress
    # Stop now, not at the first save hours in, if the folder lacks the space: a
    # save writes the new checkpoint next to the previous one, twice its size.
    bulk = {"recipe": recipe.state_dict(), "rng": rng_state(), "config": config}
    size = checkpoint_nbytes(bulk) + recipe.pending_optimizer_nbytes()
    size += online.final_nbytes() if online is not None else 0
    check_space(ckpt_path.parent, 2 * size)

    # Create env and logger
    eval_env = make_environment(cfg, data, device)
    logger, exp_name = make_logger(cfg, name.upper(), resumed and resumed["exp_name"])
    if resumed is not None and isinstance(logger, CSVLogger):
        # the steps after the checkpoint are trained (and logged) again
        drop_logged_after(logger.experiment.log_dir, resumed["step"])
    dataset_score = dataset_average_normalized_score(cfg.replay_buffer.dataset)

    def update(batch, active):
        return update_step(recipe, batch, active)

    if cfg.compile.compile:
        update = compile_update(update, cfg)
    if cfg.compile.cudagraphs:
        if device.type != "cuda":
            raise SystemExit("compile.cudagraphs=true needs a CUDA device.")
        warnings.warn(
            "CudaGraphModule is experimental and may lead to silently wrong "
            "results. Use with caution.",
            category=UserWarning,
        )
        uncaptured, update = update, capture_update(recipe, update)

    offline_steps, saved_step = cfg.optim.gradient_steps, start
    total = offline_steps + (online.total_updates if online is not None else 0)
    eval_envs = cfg.logger.eval_envs
    pbar = tqdm.tqdm(total=total, initial=start, disable=not cfg.logger.progress_bar)
    t_last, steps_since = time.perf_counter(), 0
    t_start = t_last
    with DeferredPreemption() as preemption:
        try:
            for step in range(start, total):
                with timeit("sample"):
                    if step < offline_steps:
                        batch = recipe.sample(replay_buffer)
                    else:
                        if online.enter() and cfg.compile.cudagraphs:
                            # online.loss.* changed numbers a graph holds
                            update = capture_update(recipe, uncaptured)
                        batch, collected = online.batch(step - offline_steps)
                        if collected is not None:
                            log_metrics(logger, collected, step + 1)
                            pbar.set_postfix(frames=online.frames, refresh=False)
                with timeit("update"):
                    torch.compiler.cudagraph_mark_step_begin()
                    loss_td = update(batch, recipe.active_groups(step))
                pbar.update(1)
                steps_since += 1
                done = step + 1 == total

                if (step + 1) % cfg.logger.log_interval == 0 or done:
                    speed = steps_since / (time.perf_counter() - t_last)
                    t_last, steps_since = time.perf_counter(), 0
                    metrics = _loss_metrics(loss_td, num_agents)
                    metrics.update(timeit.todict(prefix="time"))
                    metrics["time/updates_per_s"] = speed
                    log_metrics(logger, metrics, step + 1)
                    pbar.set_postfix(updates_s=f"{speed:.1f}", refresh=False)

                switch = online is not None and step + 1 == offline_steps
                if (step + 1) % cfg.logger.eval_iter == 0 or done or switch:
                    with timeit("eval"):
                        returns = evaluate(
                            eval_env,
                            recipe.policy,
                            cfg.logger.eval_steps,
                            seed=eval_seed(cfg.env.seed, step + 1),
                        ).reshape(num_agents, eval_envs)
                    agent_scores = [
                        float(np.mean(normalized_score(cfg.replay_buffer.dataset, r)))
                        for r in returns
                    ]
                    scores.append(
                        (step + 1, agent_scores[0] if num_agents == 1 else agent_scores)
                    )
                    log_metrics(logger, _eval_metrics(returns, agent_scores), step + 1)
                    pbar.write(
                        f"step {step + 1}: return {returns.mean():.1f}, normalised score "
                        f"{np.mean(agent_scores):.1f}"
                        + (_per_agent(agent_scores) if num_agents > 1 else "")
                    )

                preempted = preemption.pending is not None
                if (step + 1) % cfg.checkpoint.interval == 0 or done or preempted:
                    state = {
                        "recipe": recipe.state_dict(),
                        "step": step + 1,
                        "rng": rng_state(),
                        "scores": scores,
                        "exp_name": exp_name,
                        "run_id": run_id,
                        "config": config,
                        "dataset_sha256": dataset_sha256,
                        "train_s": train_s_before + time.perf_counter() - t_start,
                    }
                    if online is not None:
                        state["online"] = online.state_dict()
                    try:
                        save_checkpoint(ckpt_path, state)
                    except CheckpointError as err:
                        raise CheckpointError(
                            f"Stopped at step {step + 1}. {err} "
                            + _how_to_continue(ckpt_path, saved_step)
                        ) from None
                    saved_step = step + 1
                    if online is not None:
                        online.saved()
                    preemption.fire()  # a requeue exits here, progress saved
        finally:
            pbar.close()
            if online is not None:
                online.close()
            eval_env.close(
                raise_if_closed=False
            )  # a batched env never stepped is "closed"
    train_s = train_s_before + time.perf_counter() - t_start

    seeds = [cfg.env.seed + i for i in range(num_agents)]
    agents = [
        {"seed": seed, **summarize(_agent_scores(scores, i, num_agents), cfg)}
        for i, seed in enumerate(seeds)
    ]
    for agent in agents:
        log_metrics(
            logger,
            {
                f"{_prefix(agent['seed'] - cfg.env.seed, num_agents)}summary/{k}": v
                for k, v in agent.items()
                if k != "seed"
            },
            total,
        )
        who = f"seed {agent['seed']}: " if num_agents > 1 else ""
        torchrl_logger.info(
            f"{who}final normalised score: {agent['final_score']:.1f} "
            f"(best {agent['best_score']:.1f}, mean of last {cfg.logger.eval_last} "
            f"evaluations {agent['last_mean_score']:.1f}; dataset average: "
            f"{dataset_score:.1f})"
        )
    # A machine-readable record of the run, read by benchmarks/learning.py.
    record = {
        **(agents[0] if num_agents == 1 else {}),
        "dataset_score": dataset_score,
        "scores": scores,
        "steps": total,
        # all of the run's processes (work redone after a kill counts once)
        "train_s": train_s,
        "online_frames": cfg.online.frames,
        "algorithm": name,
        "agents": agents,
    }
    (out_dir / "summary.json").write_text(json.dumps(record, indent=1))
    return record


def _switch(checkpoint: dict) -> int:
    """The step at which the checkpoint's run went (or goes) online."""
    return checkpoint["config"]["optim"]["gradient_steps"]


def _prefix(agent: int, num_agents: int) -> str:
    return f"agent{agent}/" if num_agents > 1 else ""


def _loss_metrics(loss_td, num_agents: int) -> dict:
    """``train/<key>`` (mean over agents) and, for a group, ``agent<i>/train/<key>``."""
    metrics = {f"train/{k}": v.float().mean().item() for k, v in loss_td.items()}
    if num_agents > 1:
        for k, v in loss_td.items():
            per_agent = v.float().reshape(num_agents, -1).mean(-1).tolist()
            for i, value in enumerate(per_agent):
                metrics[f"agent{i}/train/{k}"] = value
    return metrics


def _eval_metrics(returns: np.ndarray, agent_scores: list) -> dict:
    metrics = {
        "eval/return": returns.mean(),
        "eval/normalized_score": float(np.mean(agent_scores)),
    }
    if len(agent_scores) > 1:
        for i, (ret, score) in enumerate(zip(returns, agent_scores)):
            metrics[f"agent{i}/eval/return"] = ret.mean()
            metrics[f"agent{i}/eval/normalized_score"] = score
    return metrics


def _per_agent(agent_scores: list) -> str:
    return " (agents: " + ", ".join(f"{s:.1f}" for s in agent_scores) + ")"


def _agent_scores(scores: list, agent: int, num_agents: int) -> list:
    """Agent ``agent``'s ``(step, score)`` pairs out of the run's evaluations."""
    if num_agents == 1:
        return scores
    return [(step, values[agent]) for step, values in scores]


def _how_to_continue(ckpt_path: Path, saved_step: int) -> str:
    if not saved_step:
        return "Make room (or pass checkpoint.dir=<a folder with space>) and rerun."
    return (
        f"Make room and rerun with resume={ckpt_path} (adding checkpoint.dir=<a "
        f"folder with space> if need be) to continue from step {saved_step}."
    )


def summarize(scores: list, cfg: DictConfig) -> dict:
    """Final, best and mean-of-last-``logger.eval_last`` normalised scores.

    With an online phase, also ``pretrained_score``: the score after the
    offline updates, before fine-tuning.
    """
    values = [s for _, s in scores] or [float("nan")]
    summary = {
        "final_score": values[-1],
        "best_score": max(values),
        "last_mean_score": float(np.mean(values[-cfg.logger.eval_last :])),
    }
    switch = cfg.optim.gradient_steps
    if OmegaConf.select(cfg, "online.frames") and switch:
        # the score the online phase started from
        summary["pretrained_score"] = dict(scores).get(switch, float("nan"))
    return summary


if __name__ == "__main__":
    main()
