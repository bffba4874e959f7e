"""MISA: Mutual Information Regularized Offline RL, trained on an offline dataset.

    python sota-implementations/misa/misa_offline.py                 # halfcheetah-medium-v2
    python sota-implementations/misa/misa_offline.py preset=demo     # shipped dataset, CPU, minutes
    python sota-implementations/misa/misa_offline.py loss.mi_estimator=dv   # an ablation

Every option is in ``config.yaml``; presets per task family in ``preset/``.
The same loop trains the baselines (``algorithm=bc|cql|iql|td3bc``). A run
whose checkpoint folder already holds a checkpoint continues it: rerunning a
command with a fixed ``hydra.run.dir`` (a requeued job) loses no progress.
"""

from __future__ import annotations

import json
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
    check_space,
    checkpoint_nbytes,
    CHECKPOINT_NAME,
    CheckpointError,
    resume_state,
    save_checkpoint,
)
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torchrl._utils import timeit
from utils import (
    ConfigError,
    eval_seed,
    evaluate,
    log_metrics,
    make_environment,
    make_logger,
    make_replay_buffer,
    make_update,
    rng_state,
    seed_everything,
    set_rng_state,
    update_step,
    validate_config,
)

from torchrl_misa.data import dataset_average_normalized_score, normalized_score


@hydra.main(version_base="1.2", config_path="", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(str(err)) from None


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """Trains ``cfg.algorithm``; writes checkpoints and ``out_dir/summary.json``.

    A run whose checkpoint folder already holds a checkpoint continues it (a
    requeued job finds its progress); ``resume=<file or folder>`` continues
    another run's. A checkpoint that cannot be saved stops the run with the
    previous one intact.
    """
    validate_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = Path(cfg.checkpoint.dir or out_dir / "checkpoints") / CHECKPOINT_NAME
    check_folder_writable(ckpt_path.parent)
    resumed = resume_state(cfg.resume, ckpt_path, config)
    device = torch.device(
        cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    seed_everything(cfg.seed)

    # Data, networks and the update of the chosen algorithm
    replay_buffer = make_replay_buffer(cfg, device)
    action_dim = replay_buffer.sample()["action"].shape[-1]
    recipe = make_update(cfg, replay_buffer, action_dim, device)
    start, scores, run_id = 0, [], uuid.uuid4().hex
    if resumed is not None:
        recipe.load_state_dict(resumed["recipe"])
        start, scores, run_id = resumed["step"], resumed["scores"], resumed["run_id"]
        set_rng_state(resumed["rng"])
    # Stop now, not at the first save hours in, if the folder lacks the space: a
    # save writes the new checkpoint next to the previous one, twice its size.
    bulk = {"recipe": recipe.state_dict(), "rng": rng_state(), "config": config}
    size = checkpoint_nbytes(bulk) + recipe.pending_optimizer_nbytes()
    check_space(ckpt_path.parent, 2 * size)

    eval_env = make_environment(cfg, replay_buffer, device)
    logger, exp_name = make_logger(cfg, resumed and resumed["exp_name"])
    dataset_score = dataset_average_normalized_score(cfg.env.dataset)
    if cfg.compile.compile:
        recipe.loss_module = torch.compile(recipe.loss_module, mode=cfg.compile.mode)
    if cfg.compile.cudagraphs:
        warnings.warn("cudagraphs: capture the MISA update on CUDA only.")
        if device.type != "cuda":
            raise SystemExit("compile.cudagraphs=true needs a CUDA device.")
        from tensordict.nn import CudaGraphModule

        recipe.loss_module = CudaGraphModule(recipe.loss_module, warmup=10)

    total, saved_step = cfg.optim.gradient_steps, start
    pbar = tqdm.tqdm(total=total, initial=start, disable=not cfg.logger.progress_bar)
    t_last, steps_since = time.perf_counter(), 0
    try:
        for step in range(start, total):
            with timeit("sample"):
                batch = replay_buffer.sample()
            with timeit("update"):
                loss_td = update_step(recipe, batch, step)
            pbar.update(1)
            steps_since += 1
            done = step + 1 == total

            if (step + 1) % cfg.logger.log_interval == 0 or done:
                speed = steps_since / (time.perf_counter() - t_last)
                t_last, steps_since = time.perf_counter(), 0
                metrics = {f"train/{k}": v.mean().item() for k, v in loss_td.items()}
                metrics["train/updates_per_s"] = speed
                log_metrics(logger, metrics, step + 1)
                pbar.set_postfix(updates_s=f"{speed:.1f}", refresh=False)

            if (step + 1) % cfg.eval.interval == 0 or done:
                with timeit("eval"):
                    returns = evaluate(
                        eval_env,
                        recipe.policy,
                        cfg.eval.max_steps,
                        seed=eval_seed(cfg.seed, step + 1),
                    )
                score = float(np.mean(normalized_score(cfg.env.dataset, returns)))
                scores.append((step + 1, score))
                log_metrics(
                    logger,
                    {"eval/return": returns.mean(), "eval/normalized_score": score},
                    step + 1,
                )
                pbar.write(
                    f"step {step + 1}: return {returns.mean():.1f}, normalised score {score:.1f}"
                )

            if (step + 1) % cfg.checkpoint.interval == 0 or done:
                state = {
                    "recipe": recipe.state_dict(),
                    "step": step + 1,
                    "rng": rng_state(),
                    "scores": scores,
                    "exp_name": exp_name,
                    "run_id": run_id,
                    "config": config,
                }
                try:
                    save_checkpoint(ckpt_path, state)
                except CheckpointError as err:
                    raise CheckpointError(
                        f"Stopped at step {step + 1}. {err} "
                        + _how_to_continue(ckpt_path, saved_step)
                    ) from None
                saved_step = step + 1
    finally:
        pbar.close()
        eval_env.close(raise_if_closed=False)  # a batched env never stepped is "closed"

    summary = summarize(scores, cfg.logger.eval_last, dataset_score)
    log_metrics(logger, {f"summary/{k}": v for k, v in summary.items()}, total)
    print(
        f"final normalised score: {summary['final_score']:.1f} "
        f"(best {summary['best_score']:.1f}, mean of last {cfg.logger.eval_last} evaluations "
        f"{summary['last_mean_score']:.1f}; dataset average: {dataset_score:.1f})"
    )
    # A machine-readable record of the run, read by benchmarks/learning.py.
    record = {**summary, "scores": scores, "steps": total, "algorithm": cfg.algorithm}
    (out_dir / "summary.json").write_text(json.dumps(record, indent=1))
    return summary


def _how_to_continue(ckpt_path: Path, saved_step: int) -> str:
    if not saved_step:
        return "Make room (or pass checkpoint.dir=<a folder with space>) and rerun."
    return (
        f"Make room and rerun with resume={ckpt_path} (adding checkpoint.dir=<a "
        f"folder with space> if need be) to continue from step {saved_step}."
    )


def summarize(scores: list, last: int, dataset_score: float) -> dict:
    """Final, best and mean-of-last-``last`` normalised scores."""
    values = [s for _, s in scores] or [float("nan")]
    return {
        "final_score": values[-1],
        "best_score": max(values),
        "last_mean_score": float(np.mean(values[-last:])),
        "dataset_score": dataset_score,
    }


if __name__ == "__main__":
    main()
