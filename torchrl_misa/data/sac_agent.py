"""The behaviour agent of the dataset generator: TorchRL's SAC, small and CPU-friendly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.modules.distributions import TanhNormal
from torchrl.objectives import group_optimizers, SoftUpdate
from torchrl.objectives.sac import SACLoss


@dataclass
class SACConfig:
    """Hyper-parameters of the behaviour agent (TorchRL's SAC example defaults)."""

    hidden: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    target_update_polyak: float = 0.995
    batch_size: int = 256


def make_actor(obs_dim: int, action_spec, hidden: int = 256) -> ProbabilisticActor:
    """Tanh-Gaussian policy ``observation -> action`` with an ``hidden``-``hidden`` ReLU MLP."""
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * action_spec.shape[-1],
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        },
        default_interaction_type=InteractionType.RANDOM,
    )


class SACAgent(nn.Module):
    """Actor, two critics, :class:`~torchrl.objectives.SACLoss`, target updates and Adam.

    Args:
        env: an env with ``observation`` ``[obs_dim]`` and actions in ``[-1, 1]``.
        cfg: :class:`SACConfig`.

    Examples:
        >>> from torchrl_misa.data.envs import make_env
        >>> env = make_env("Pendulum-v1", seed=0)
        >>> agent = SACAgent(env, SACConfig(hidden=32, batch_size=8))
        >>> batch = env.rollout(8, agent.actor)
        >>> sorted(agent.update(batch).keys())
        ['alpha', 'loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    def __init__(self, env: EnvBase, cfg: SACConfig = SACConfig()):
        super().__init__()
        self.cfg = cfg
        action_spec = env.action_spec_unbatched
        obs_dim = env.observation_spec["observation"].shape[-1]
        self.actor = make_actor(obs_dim, action_spec, cfg.hidden)
        qnet = MLP(out_features=1, num_cells=[cfg.hidden, cfg.hidden])
        self.qvalue = ValueOperator(qnet, in_keys=["action", "observation"])
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            td = env.fake_tensordict()
            self.actor(td)
            self.qvalue(td)
        self.loss = SACLoss(
            self.actor,
            self.qvalue,
            num_qvalue_nets=2,
            loss_function="l2",
            delay_qvalue=True,
            alpha_init=1.0,
            action_spec=action_spec,
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
        """Everything needed to resume training."""
        return {"loss": self.loss.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optim"])


@torch.no_grad()
def evaluate(env: EnvBase, policy, episodes: int, max_steps: int) -> list[float]:
    """Undiscounted returns of ``episodes`` deterministic episodes of ``policy`` on ``env``.

    ``policy=None`` draws uniform random actions from the env's action spec.
    """
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            td = env.rollout(max_steps, policy, break_when_any_done=True)
            returns.append(float(td["next", "reward"].sum()))
    return returns
