"""BC, CQL, IQL, SAC and TD3+BC through TorchRL's losses, trained by the MISA script's loop.

The learning benchmark compares MISA with these baselines on the same data,
networks, batches, step budget, evaluation and checkpoints: each baseline is an
update recipe (``sota-implementations/misa/utils.py``'s ``build_recipe``) passed
to the MISA script's ``train``. Options are the script's (``config.yaml``),
plus ``+algorithm=<bc|cql|iql|sac|td3bc>``::

    python benchmarks/baselines.py +algorithm=cql preset=demo
    python benchmarks/baselines.py +algorithm=td3bc preset=demo num_agents=5

``num_agents=N`` trains N seeds in one process, for every baseline (IQL
through ``VmapIQLLoss``, CQL through ``VmapCQLLoss``: TorchRL's losses with
their ``.data`` reads made vmap-safe, see ``docs/agents.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

RECIPE_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "misa"
if str(RECIPE_DIR) not in sys.path:
    sys.path.insert(
        0, str(RECIPE_DIR)
    )  # the recipe's modules import each other by name

import misa_offline  # noqa: E402
from checkpoint import CheckpointError  # noqa: E402
from torchrl.objectives import CQLLoss, IQLLoss, SACLoss, TD3BCLoss  # noqa: E402
from torchrl.objectives.bc import BCLoss  # noqa: E402
from utils import (  # noqa: E402
    build_recipe,
    ConfigError,
    initialize_lazy,
    make_actor,
    make_critic,
    UpdateRecipe,
)

BASELINES = ("bc", "cql", "iql", "sac", "td3bc")


def make_baseline_update(algorithm: str) -> Callable[..., UpdateRecipe]:
    """``make_update(cfg, data, action_dim, device)`` of ``algorithm``, for ``train``."""
    if algorithm not in BASELINES:
        raise ConfigError(
            f"algorithm={algorithm}: unknown, choose one of {', '.join(BASELINES)}"
        )
    return _RECIPES[algorithm]


def _networks(cfg, data, action_dim, device, deterministic=False, value=False):
    """The script's networks with torch's initialisation and a fixed log-std offset.

    ``network.init`` and ``network.trainable_log_std`` (the authors' MISA
    code's choices) are MISA's; the baselines keep their own implementations'.
    """
    actor = make_actor(
        cfg, action_dim, deterministic=deterministic, trainable_log_std=False
    ).to(device)
    critic = make_critic(cfg).to(device)
    modules = [actor, critic]
    if value:
        modules.append(make_critic(cfg, in_keys=("observation",)).to(device))
    initialize_lazy(modules, data.replay_buffer)
    return modules


def _bc(cfg, data, action_dim, device):
    def make_loss():
        actor, _ = _networks(cfg, data, action_dim, device)
        return BCLoss(actor), actor

    groups = {"actor": (["loss_bc"], ["actor_network_params"], cfg.optim.actor_lr)}
    return build_recipe(
        make_loss, groups, num_agents=cfg.num_agents, seed=cfg.env.seed, tau=None
    )


def _cql(cfg, data, action_dim, device):
    def make_loss():
        actor, critic = _networks(cfg, data, action_dim, device)
        # Kumar et al.'s locomotion settings: min_q_weight 5, 10 random actions,
        # no Lagrange, deterministic backup.
        loss = CQLLoss(
            actor, critic, loss_function="l2", min_q_weight=5.0, num_random=10
        )
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        return loss, actor

    o = cfg.optim
    groups = {
        "actor": (["loss_actor"], ["actor_network_params"], o.actor_lr),
        "critic": (
            ["loss_qvalue", "loss_cql"],
            ["qvalue_network_params"],
            o.critic_lr,
        ),
        "alpha": (["loss_alpha"], ["log_alpha"], o.alpha_lr),
    }
    return build_recipe(
        make_loss,
        groups,
        num_agents=cfg.num_agents,
        seed=cfg.env.seed,
        tau=cfg.loss.tau,
    )


def _iql(cfg, data, action_dim, device):
    def make_loss():
        actor, critic, value = _networks(cfg, data, action_dim, device, value=True)
        # Kostrikov et al.'s locomotion settings: expectile 0.7, temperature 3.
        loss = IQLLoss(
            actor, critic, value, loss_function="l2", expectile=0.7, temperature=3.0
        )
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        return loss, actor

    lr = cfg.optim.critic_lr
    groups = {
        "actor": (["loss_actor"], ["actor_network_params"], lr),
        "critic": (["loss_qvalue"], ["qvalue_network_params"], lr),
        "value": (["loss_value"], ["value_network_params"], lr),
    }
    return build_recipe(
        make_loss,
        groups,
        num_agents=cfg.num_agents,
        seed=cfg.env.seed,
        tau=cfg.loss.tau,
    )


def _sac(cfg, data, action_dim, device):
    # An online algorithm: the control of the online benchmark, trained from
    # scratch with optim.gradient_steps=0 online.offline_fraction=0.
    def make_loss():
        actor, critic = _networks(cfg, data, action_dim, device)
        loss = SACLoss(actor, critic, loss_function="l2")
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        return loss, actor

    o = cfg.optim
    groups = {
        "actor": (["loss_actor"], ["actor_network_params"], o.actor_lr),
        "critic": (["loss_qvalue"], ["qvalue_network_params"], o.critic_lr),
        "alpha": (["loss_alpha"], ["log_alpha"], o.alpha_lr),
    }
    return build_recipe(
        make_loss,
        groups,
        num_agents=cfg.num_agents,
        seed=cfg.env.seed,
        tau=cfg.loss.tau,
    )


def _td3bc(cfg, data, action_dim, device):
    # Fujimoto & Gu's settings: alpha 2.5, policy noise 0.2 clipped at 0.5,
    # actor and targets updated every 2 critic steps.
    def make_loss():
        actor, critic = _networks(cfg, data, action_dim, device, deterministic=True)
        loss = TD3BCLoss(
            actor, critic, bounds=(-1.0, 1.0), loss_function="l2", alpha=2.5
        )
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        return loss, actor

    lr = cfg.optim.critic_lr
    groups = {
        "actor": (["loss_actor"], ["actor_network_params"], lr),
        "critic": (["loss_qvalue"], ["qvalue_network_params"], lr),
    }
    return build_recipe(
        make_loss,
        groups,
        num_agents=cfg.num_agents,
        seed=cfg.env.seed,
        tau=cfg.loss.tau,
        every={"actor": 2},
    )


_RECIPES = {"bc": _bc, "cql": _cql, "iql": _iql, "sac": _sac, "td3bc": _td3bc}


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """``misa_offline.train`` with the baseline ``cfg.algorithm``."""
    algorithm = cfg.get("algorithm")
    if algorithm is None:
        raise ConfigError(
            "algorithm: missing, pass +algorithm=<bc|cql|iql|sac|td3bc> "
            "(MISA itself: sota-implementations/misa/misa_offline.py)"
        )
    make_update = make_baseline_update(algorithm)  # an unknown one fails here
    return misa_offline.train(cfg, out_dir, make_update=make_update, name=algorithm)


@hydra.main(version_base="1.2", config_path=str(RECIPE_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
