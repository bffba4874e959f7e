"""MISA: Mutual Information Regularized Offline RL, trained on an offline dataset.

    python sota-implementations/misa/misa_offline.py                 # halfcheetah-medium-v2
    python sota-implementations/misa/misa_offline.py preset=demo     # shipped dataset, CPU, minutes
    python sota-implementations/misa/misa_offline.py loss.mi_estimator=dv   # an ablation

Every option is in ``config.yaml``; presets per task family in ``preset/``.
The same loop trains the baselines (``algorithm=bc|cql|iql|td3bc``).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
import tqdm
from hydra.core.hydra_config import HydraConfig
from torchrl._utils import timeit
from utils import (
    evaluate,
    load_checkpoint,
    log_metrics,
    make_environment,
    make_logger,
    make_replay_buffer,
    make_update,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    update_step,
)

from torchrl_misa.data import dataset_average_normalized_score, normalized_score


@hydra.main(version_base="1.2", config_path="", config_name="config")
def main(cfg) -> dict:
    device = torch.device(
        cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    resumed = load_checkpoint(cfg.resume) if cfg.resume else None
    seed_everything(cfg.seed)

    # Data, networks and the update of the chosen algorithm
    replay_buffer = make_replay_buffer(cfg, device)
    action_dim = replay_buffer.sample()["action"].shape[-1]
    recipe = make_update(cfg, replay_buffer, action_dim, device)
    eval_env = make_environment(cfg, replay_buffer, device)
    logger, exp_name = make_logger(cfg, resumed and resumed["exp_name"])
    dataset_score = dataset_average_normalized_score(cfg.env.dataset)

    start, scores = 0, []
    if resumed is not None:
        recipe.load_state_dict(resumed["recipe"])
        start, scores = resumed["step"], resumed["scores"]
        set_rng_state(resumed["rng"])
    if cfg.compile.compile:
        recipe.loss_module = torch.compile(recipe.loss_module, mode=cfg.compile.mode)
    if cfg.compile.cudagraphs:
        warnings.warn("cudagraphs: capture the MISA update on CUDA only.")
        if device.type != "cuda":
            raise SystemExit("compile.cudagraphs=true needs a CUDA device.")
        from tensordict.nn import CudaGraphModule

        recipe.loss_module = CudaGraphModule(recipe.loss_module, warmup=10)

    ckpt_path = Path(cfg.checkpoint.dir or out_dir / "checkpoints") / "last.pt"
    total = cfg.optim.gradient_steps
    pbar = tqdm.tqdm(total=total, initial=start, disable=not cfg.logger.progress_bar)
    t_last, steps_since = time.perf_counter(), 0
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
                returns = evaluate(eval_env, recipe.policy, cfg.eval.max_steps)
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
            extra = {"exp_name": exp_name, "scores": scores}
            save_checkpoint(ckpt_path, recipe, step + 1, extra)
    pbar.close()

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
    eval_env.close()
    return summary


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
