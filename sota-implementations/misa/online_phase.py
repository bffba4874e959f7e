"""The online phase of the MISA script: fine-tuning through TorchRL's collector.

After the offline updates, ``online.frames > 0`` switches the loop to the
:class:`OnlinePhase`: a :class:`~torchrl.collectors.Collector` steps
``online.envs`` copies of the task per agent with the current policy (sampling
it), every ``online.frames_per_batch`` frames go to the agents' online buffers,
and ``online.frames_per_batch * online.utd`` updates follow, each on a batch
mixing offline and online transitions in the fixed proportion
``online.offline_fraction``
(:class:`~torchrl_misa.data.GroupOfflineToOnlineReplayBuffer`).

Exact resume: the online buffers are saved with the checkpoint, and the
collector's envs restart from a seeded reset at the first collection after
every checkpoint (an uninterrupted run too). A resumed run therefore collects
the very transitions an uninterrupted one does; the episodes under way at a
checkpoint are cut there (their last transitions stay, bootstrapped).
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.envs import ExplorationType, RewardSum, TransformedEnv
from torchrl.envs.transforms import ObservationNorm
from utils import ConfigError, make_environment

from torchrl_misa.data import (
    GroupOfflineToOnlineReplayBuffer,
    normalized_score,
    OfflineData,
)


def collect_seed(seed: int, frames: int) -> int:
    """The collector envs' seed at a reset after ``frames`` collected frames."""
    return int(np.random.SeedSequence([seed, frames, 1]).generate_state(1)[0])


class OnlinePhase:
    """Collects with the current policy and hands out mixed batches, update by update.

    Args:
        cfg: the run's config (``online.*``, ``num_agents``, ``env``,
            ``replay_buffer.batch_size``).
        data: the offline dataset (its buffer is the offline half of each batch).
        recipe: the update recipe; ``recipe.policy`` acts, ``recipe.sample``
            shapes the batches.
        device: where the policy runs.
    """

    def __init__(self, cfg: DictConfig, data: OfflineData, recipe, device) -> None:
        o = cfg.online
        self.cfg, self.data, self.recipe = cfg, data, recipe
        self.num_agents, self.seed = cfg.num_agents, cfg.env.seed
        self.frames_per_batch = o.frames_per_batch
        self.updates_per_batch = int(o.utd * o.frames_per_batch)
        self.total_updates = o.frames // o.frames_per_batch * self.updates_per_batch
        self.loss_overrides = {k: v for k, v in o.loss.items() if v is not None}
        offline = data.replay_buffer
        # online observations come normalised from the env; the rest of the
        # dataset's processing (action clipping, reward scaling) applies as offline
        online_transform = [
            t for t in offline.transform if not isinstance(t, ObservationNorm)
        ]
        self.buffer = GroupOfflineToOnlineReplayBuffer(
            offline,
            online_capacity=o.frames,
            offline_fraction=float(o.offline_fraction),
            batch_size=cfg.replay_buffer.batch_size * self.num_agents,
            num_groups=self.num_agents,
            online_transform=online_transform,
        )
        self.frames = 0  # per agent
        self._reset_due = True  # at the start, and after every checkpoint
        self._collector = None
        self._device = device
        self._applied = False
        self._check_loss_overrides()

    # ------------------------------------------------------------- collecting
    def _make_collector(self) -> Collector:
        env = make_environment(
            self.cfg, self.data, self._device, per_agent=self.cfg.online.envs
        )
        if isinstance(env, TransformedEnv):  # episode returns, for the logs
            env.append_transform(RewardSum())
        else:
            env = TransformedEnv(env, RewardSum())
        return Collector(
            env,
            self.recipe.policy,
            frames_per_batch=self.frames_per_batch * self.num_agents,
            total_frames=-1,
            exploration_type=ExplorationType.RANDOM,
            auto_register_policy_transforms=False,
        )

    def _collect(self) -> dict:
        if self._collector is None:
            self._collector = self._make_collector()
        if self._reset_due:
            self._collector.set_seed(collect_seed(self.seed, self.frames))
            self._collector.reset()
            self._reset_due = False
        with torch.no_grad(), timeit("collect"):
            batch = self._collector.next()
        # [agents * envs, T] -> [agents, envs * T]: agent i stepped the i-th slice
        per_agent = batch.reshape(self.num_agents, -1)
        self.buffer.extend(per_agent if self.num_agents > 1 else per_agent[0])
        self.frames += self.frames_per_batch
        return self._batch_metrics(per_agent)

    def _batch_metrics(self, per_agent: TensorDictBase) -> dict:
        done = per_agent["next", "done"].squeeze(-1)
        episode = per_agent["next", "episode_reward"].squeeze(-1)
        returns = [
            episode[i][done[i]].float().mean().item() if done[i].any() else None
            for i in range(self.num_agents)
        ]
        metrics = {
            "online/frames": self.frames,
            "online/offline_fraction": self.buffer.offline_fraction,
        }
        finished = [r for r in returns if r is not None]
        if finished:
            name = self.cfg.replay_buffer.dataset
            metrics["online/return"] = float(np.mean(finished))
            metrics["online/normalized_score"] = float(
                np.mean([normalized_score(name, r) for r in finished])
            )
        return metrics

    # --------------------------------------------------------------- updates
    def _check_loss_overrides(self) -> None:
        loss = self.recipe.loss_module
        for name, value in self.loss_overrides.items():
            try:
                current = (
                    loss.get_option(name)  # an agent group
                    if hasattr(loss, "get_option")
                    else getattr(loss, name)
                )
            except AttributeError:
                current = None
            if name.startswith("_") or not isinstance(current, float):
                raise ConfigError(
                    f"online.loss.{name}={value}: {type(loss).__name__} has no "
                    f"real-valued option {name!r}; set it to null or remove it"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"online.loss.{name}={value}: must be a number")

    def enter(self) -> bool:
        """Applies ``online.loss.*`` (once, at the first online update or on resume).

        Returns whether it changed the loss just now.
        """
        if self._applied:
            return False
        loss = self.recipe.loss_module
        for name, value in self.loss_overrides.items():
            if hasattr(loss, "set_option"):  # an agent group
                loss.set_option(name, value)
            else:
                setattr(loss, name, float(value))
        self._applied = True
        return bool(self.loss_overrides)

    def batch(self, update: int) -> tuple[TensorDictBase, dict | None]:
        """The batch of online update ``update`` (from 0), collecting first when due.

        Returns the batch and the collection's metrics (``None`` when this
        update collected nothing).
        """
        metrics = None
        if update == self.frames // self.frames_per_batch * self.updates_per_batch:
            metrics = self._collect()
        return self.recipe.sample(self.buffer), metrics

    def saved(self) -> None:
        """Called after a checkpoint: the next collection starts from a seeded reset."""
        self._reset_due = True

    def final_nbytes(self) -> int:
        """The online buffers' bytes once full (they are saved with the checkpoint)."""
        row = self.data.replay_buffer.storage[:1]
        return row.bytes() * self.cfg.online.frames * self.num_agents

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "frames": self.frames}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.frames = state["frames"]

    def close(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
