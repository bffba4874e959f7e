"""The behaviour agent of the dataset tool: TorchRL's SAC on the training recipe's networks.

The actor, the critics, the evaluation and the checkpoint format are those of
the MISA training recipe (``sota-implementations/misa/utils.py`` and
``checkpoint.py``), imported from there: its folder is put on the import path
here, as the recipe's own script has it. Only the SAC update lives here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import group_optimizers, SoftUpdate
from torchrl.objectives.sac import SACLoss

RECIPE_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "misa"
if str(RECIPE_DIR) not in sys.path:
    sys.path.insert(
        0, str(RECIPE_DIR)
    )  # the recipe's modules import each other by name
import checkpoint as recipe_checkpoint  # noqa: E402
import utils as recipe_utils  # noqa: E402

# the recipe's checkpoint format (atomic save, format tag, sha256, weights_only
# load), its evaluation seeds and its random-state capture, used as they are
save_checkpoint = recipe_checkpoint.save_checkpoint
load_checkpoint = recipe_checkpoint.load_checkpoint
CheckpointError = recipe_checkpoint.CheckpointError
eval_seed = recipe_utils.eval_seed
rng_state = recipe_utils.rng_state
set_rng_state = recipe_utils.set_rng_state


@dataclass
class SACConfig:
    """Hyper-parameters of the behaviour agent (TorchRL's SAC example defaults)."""

    hidden: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    target_update_polyak: float = 0.995
    batch_size: int = 256


def network_config(hidden: int) -> DictConfig:
    """The ``network`` settings the recipe's makers read: two ``hidden`` ReLU layers."""
    sizes = [int(hidden), int(hidden)]
    return OmegaConf.create(
        {
            "network": {
                "actor_hidden_sizes": sizes,
                "actor_activation": "relu",
                "critic_hidden_sizes": sizes,
                "critic_activation": "relu",
            }
        }
    )


def make_actor(env: EnvBase, hidden: int) -> ProbabilisticActor:
    """The recipe's tanh-Gaussian actor for ``env`` (actions in ``[-1, 1]``), shapes set."""
    actor = recipe_utils.make_actor(
        network_config(hidden), env.action_spec_unbatched.shape[-1]
    )
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        actor(env.fake_tensordict())  # lazy layers get their input size
    return actor


class SACAgent(nn.Module):
    """Actor, two critics, :class:`~torchrl.objectives.SACLoss`, target updates and Adam.

    Args:
        env: an env with ``observation`` ``[obs_dim]`` and actions in ``[-1, 1]``.
        cfg: :class:`SACConfig`.

    Examples:
        >>> from torchrl_misa.data import make_env
        >>> env = make_env("Pendulum-v1", seed=0)
        >>> agent = SACAgent(env, SACConfig(hidden=32, batch_size=8))
        >>> batch = env.rollout(8, agent.actor)
        >>> sorted(agent.update(batch).keys())
        ['alpha', 'loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    def __init__(self, env: EnvBase, cfg: SACConfig = SACConfig()):
        super().__init__()
        self.cfg = cfg
        self.actor = make_actor(env, cfg.hidden)
        self.qvalue = recipe_utils.make_critic(network_config(cfg.hidden))
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            self.qvalue(self.actor(env.fake_tensordict()))
        self.loss = SACLoss(
            self.actor,
            self.qvalue,
            num_qvalue_nets=2,
            loss_function="l2",
            delay_qvalue=True,
            alpha_init=1.0,
            action_spec=env.action_spec_unbatched,
        )
        self.loss.make_value_estimator(gamma=cfg.gamma)
        self.target_updater = SoftUpdate(self.loss, eps=cfg.target_update_polyak)
        params = self.loss
        self.optimizer = group_optimizers(
            torch.optim.Adam(
                params.actor_network_params.flatten_keys().values(), cfg.lr
            ),
            torch.optim.Adam(
                params.qvalue_network_params.flatten_keys().values(), cfg.lr
            ),
            torch.optim.Adam([params.log_alpha], cfg.lr),
        )

    def update(self, batch: TensorDictBase) -> TensorDictBase:
        """One gradient step on every loss and a Polyak update of the target critics."""
        out = self.loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.target_updater.step()
        return out.select("loss_actor", "loss_qvalue", "loss_alpha", "alpha").detach()

    def state(self) -> dict:
        """Everything needed to resume training (tensors and plain values)."""
        return {"loss": self.loss.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        """Restores :meth:`state`."""
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optim"])


def episode_returns(
    env: EnvBase, policy, episodes: int, max_steps: int, seed: int
) -> np.ndarray:
    """Returns of ``episodes`` deterministic episodes, through the recipe's ``evaluate``.

    Episode ``i`` runs on ``env`` seeded with ``eval_seed(seed, i)``, so the
    result depends only on ``(policy, seed)``. ``policy=None`` draws uniform
    random actions from the env's action spec.
    """
    return np.concatenate(
        [
            recipe_utils.evaluate(env, policy, max_steps, eval_seed(seed, i))
            for i in range(episodes)
        ]
    )


def save_policy(path: str | Path, actor, *, env_id: str, hidden: int, **info) -> Path:
    """Saves ``actor``'s weights with what :func:`load_policy` needs (the recipe's format)."""
    path = Path(path)
    save_checkpoint(
        path, {"actor": actor.state_dict(), "env_id": env_id, "hidden": hidden, **info}
    )
    return path


def load_policy(path: str | Path, env: EnvBase) -> ProbabilisticActor:
    """The actor saved by :func:`save_policy` at ``path``, for ``env``.

    Raises:
        CheckpointError: not a checkpoint of this format, truncated or corrupted.
    """
    saved = load_checkpoint(path)
    actor = make_actor(env, saved["hidden"])
    actor.load_state_dict(saved["actor"])
    return actor
