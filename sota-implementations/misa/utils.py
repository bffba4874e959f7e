"""Makers for the MISA offline script: data, env, networks, losses, optimisers, logger.

The training loop in ``misa_offline.py`` does not know which algorithm it
trains: :func:`make_update` returns an :class:`UpdateRecipe` (a loss module, one
optimiser per group of loss entries, how often each group steps, a target-network
updater). MISA is one recipe; the baselines (BC, TorchRL's ``CQLLoss``,
``IQLLoss``, ``TD3BCLoss``) are others, built from the same networks and data,
so every method runs through the same loop. To add a method, add a branch to
:func:`make_update` that returns its recipe.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.envs import ExplorationType, SerialEnv, set_exploration_type
from torchrl.modules import (
    MLP,
    ProbabilisticActor,
    TanhDelta,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import CQLLoss, IQLLoss, LossModule, SoftUpdate, TD3BCLoss
from torchrl.objectives.bc import BCLoss
from torchrl.record.loggers import generate_exp_name, get_logger

from torchrl_misa import MISALoss
from torchrl_misa.data import (
    dataset_env_id,
    DatasetUnavailableError,
    DEMO_DATASET_PATH,
    make_env,
    make_offline_replay_buffer,
)

ALGORITHMS = ("misa", "bc", "cql", "iql", "td3bc")
# `${demo_dataset:}` in the configs: the shipped dataset, wherever the run starts.
OmegaConf.register_new_resolver(
    "demo_dataset", lambda: str(DEMO_DATASET_PATH), replace=True
)


# --------------------------------------------------------------------- config
_POSITIVE_INTS = (
    "optim.gradient_steps",
    "optim.batch_size",
    "eval.interval",
    "eval.episodes",
    "eval.max_steps",
    "logger.log_interval",
    "logger.eval_last",
    "checkpoint.interval",
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A setting the script cannot run with; the message names it and what to pass."""


def validate_config(cfg: DictConfig) -> None:
    """Raises a :class:`ConfigError` that lists every setting the run cannot start with.

    Called before any data is loaded, so a typo costs seconds, not a download.
    """
    problems = []
    for key in _POSITIVE_INTS:
        value = OmegaConf.select(cfg, key)
        if not (isinstance(value, int) and _is_number(value) and value > 0):
            problems.append(f"{key}={_show(value)}: must be a positive integer")
    if cfg.algorithm not in ALGORITHMS:
        problems.append(
            f"algorithm={_show(cfg.algorithm)}: unknown, choose one of {', '.join(ALGORITHMS)}"
        )
    alpha = cfg.loss.alpha_init
    if not (_is_number(alpha) and alpha > 0):
        problems.append(
            f"loss.alpha_init={_show(alpha)}: the temperature must start above 0 "
            "(its log is trained)"
        )
    entropy = cfg.loss.target_entropy
    if not (entropy == "auto" or _is_number(entropy)):
        problems.append(
            f"loss.target_entropy={_show(entropy)}: pass loss.target_entropy=auto "
            "(minus the action dimension) or a number"
        )
    if problems:
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems))


def _show(value) -> str:
    """A value as written on hydra's command line (``null`` for None)."""
    return "null" if value is None else str(value)


# ----------------------------------------------------------------------- data
def make_replay_buffer(cfg: DictConfig, device: torch.device):
    """The dataset's replay buffer, or a clear stop when it cannot be had."""
    try:
        return make_offline_replay_buffer(
            cfg.env.dataset,
            cfg.optim.batch_size,
            clip_actions=cfg.env.clip_actions,
            reward_processing=cfg.env.reward_processing,
            normalize_observations=cfg.env.normalize_observations,
            device=device,
            root=cfg.env.root,
        )
    except DatasetUnavailableError as err:
        raise SystemExit(
            f"{err}\n\nTo train without a download: pass a local D4RL-format file, "
            "`env.dataset=/path/to/file.hdf5`, or run the demo on the dataset "
            "shipped in the repo: `python sota-implementations/misa/misa_offline.py "
            "preset=demo`."
        ) from None


def make_environment(cfg: DictConfig, replay_buffer, device: torch.device):
    """The evaluation env: ``cfg.eval.episodes`` copies of the dataset's task, batched.

    A :class:`~torchrl.envs.SerialEnv` steps the copies in this process (worker
    processes cost more than they save for small tasks on a few cores). The
    dataset's observation normaliser (if any) is appended, so the policy sees
    observations as in training.
    """
    env_id = cfg.env.eval_env or dataset_env_id(cfg.env.dataset)
    make = functools.partial(make_env, env_id, obs_norm=replay_buffer.obs_norm)
    env = SerialEnv(cfg.eval.episodes, make) if cfg.eval.episodes > 1 else make()
    return env.to(device)  # seeded by each evaluation (see `evaluate`)


# ------------------------------------------------------------------- networks
class _ActorHead(nn.Module):
    """Mean and std of the policy as in the authors' code (github.com/sail-sg/MISA).

    ``log_std = raw - 1.0`` clipped to ``[-5, 2]``; the mean clipped to ``[-9, 9]``.
    """

    def forward(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, -1)
        return loc.clamp(-9.0, 9.0), (raw - 1.0).clamp(-5.0, 2.0).exp()


def _mlp(out_features: int, cells, activation: str) -> MLP:
    act = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}[activation]
    return MLP(out_features=out_features, num_cells=list(cells), activation_class=act)


def make_actor(cfg: DictConfig, action_dim: int, deterministic: bool = False):
    """A SAC-style tanh-Gaussian actor (or a tanh-deterministic one for TD3+BC)."""
    spec = Bounded(-1.0, 1.0, (action_dim,))
    if deterministic:
        net = _mlp(
            action_dim, cfg.network.actor_hidden_sizes, cfg.network.actor_activation
        )
        module = TensorDictModule(net, in_keys=["observation"], out_keys=["param"])
        return ProbabilisticActor(
            module,
            in_keys=["param"],
            spec=spec,
            distribution_class=TanhDelta,
            distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
            default_interaction_type=ExplorationType.DETERMINISTIC,
        )
    net = nn.Sequential(
        _mlp(
            2 * action_dim, cfg.network.actor_hidden_sizes, cfg.network.actor_activation
        ),
        _ActorHead(),
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        return_log_prob=False,
        default_interaction_type=ExplorationType.DETERMINISTIC,
    )


def make_critic(cfg: DictConfig, in_keys=("observation", "action")) -> ValueOperator:
    """An MLP critic on ``in_keys``, ELU, last layer initialised small (scale 1e-2)."""
    net = _mlp(1, cfg.network.critic_hidden_sizes, cfg.network.critic_activation)
    last = net[-1]
    # Variance scaling 1e-2 (fan-in, uniform), as the authors' critic.
    bound = float(np.sqrt(3 * 1e-2 / last.in_features)) if last.in_features else 0.0
    if hasattr(last, "weight") and isinstance(last.weight, nn.Parameter):
        nn.init.uniform_(last.weight, -bound, bound)
        nn.init.zeros_(last.bias)
    return ValueOperator(net, in_keys=list(in_keys))


def initialize_lazy(modules, replay_buffer) -> None:
    """Runs each module once on a batch so that lazy layers get their shapes."""
    batch = replay_buffer.sample()[:2]
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for module in modules:
            module(batch.clone())


# --------------------------------------------------------------- update step
@dataclass
class UpdateRecipe:
    """What one gradient step of an algorithm needs, for the algorithm-agnostic loop.

    Attributes:
        loss_module: returns a TensorDict with the ``loss_*`` entries below.
        optimizers: ``name -> (loss keys, optimiser)``: the optimiser steps on the
            sum of those entries' gradients.
        every: ``name -> n``: that group steps every ``n`` updates (default 1),
            e.g. TD3+BC's delayed actor.
        target_updater: Polyak averaging of the target networks, or ``None``.
        policy: the module evaluated in the environment.
    """

    loss_module: LossModule
    optimizers: dict
    policy: nn.Module
    target_updater: SoftUpdate | None = None
    every: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {
            "loss_module": self.loss_module.state_dict(),
            "optimizers": {
                k: opt.state_dict() for k, (_, opt) in self.optimizers.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss_module.load_state_dict(state["loss_module"])
        for k, (_, opt) in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])

    def pending_optimizer_nbytes(self) -> int:
        """Bytes of the optimiser state still to come: Adam's two moments appear
        at a parameter's first step, so a fresh recipe's state is a third of its
        size after one update."""
        return sum(
            2 * p.nelement() * p.element_size()
            for _, opt in self.optimizers.values()
            for group in opt.param_groups
            for p in group["params"]
            if p not in opt.state
        )


def update_step(recipe: UpdateRecipe, batch, step: int):
    """One gradient step; returns the loss module's output, detached."""
    loss_td = recipe.loss_module(batch)
    groups = [
        (keys, opt)
        for name, (keys, opt) in recipe.optimizers.items()
        if step % recipe.every.get(name, 1) == 0
    ]
    total = sum(loss_td[k] for keys, _ in groups for k in keys)
    total.backward()
    for _, opt in groups:
        opt.step()
    # Groups that did not step this time must not carry gradients into the next.
    for _, opt in recipe.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if recipe.target_updater is not None:
        recipe.target_updater.step()
    return loss_td.detach()


def _adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(list(params), lr=lr)


def _group(loss: LossModule, keys: list, params: str, lr: float) -> tuple:
    """An optimiser group: ``keys`` of the loss output train ``loss.<params>``."""
    return keys, _adam(getattr(loss, params).values(True, True), lr)


def make_update(
    cfg: DictConfig, replay_buffer, action_dim: int, device
) -> UpdateRecipe:
    """The :class:`UpdateRecipe` of ``cfg.algorithm`` on the script's networks."""
    algo = cfg.algorithm
    if algo not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algo!r}; choose one of {ALGORITHMS}.")
    o = cfg.optim
    actor = make_actor(cfg, action_dim, deterministic=algo == "td3bc").to(device)
    critic = make_critic(cfg).to(device)
    modules = [actor, critic]
    if algo == "misa":
        mi_critic = make_critic(cfg).to(device) if cfg.loss.mi_critic else None
        modules += [mi_critic] if mi_critic is not None else []
        initialize_lazy(modules, replay_buffer)
        kwargs = OmegaConf.to_container(cfg.loss, resolve=True)
        kwargs.pop("mi_critic")
        loss = MISALoss(actor, critic, mi_critic=mi_critic, **kwargs)
        loss.make_value_estimator(gamma=o.gamma)
        optimizers = {
            "actor": _group(loss, ["loss_actor"], "actor_network_params", o.actor_lr),
            "critic": _group(
                loss, ["loss_qvalue"], "qvalue_network_params", o.critic_lr
            ),
            "alpha": (["loss_alpha"], _adam([loss.log_alpha], o.alpha_lr)),
        }
        if cfg.loss.lagrange_tau is not None:
            optimizers["alpha_prime"] = (
                ["loss_alpha_prime"],
                _adam([loss.log_alpha_prime], o.alpha_prime_lr),
            )
        if mi_critic is not None:
            optimizers["mi_critic"] = _group(
                loss, ["loss_mi_critic"], "mi_critic_network_params", o.critic_lr
            )
        return UpdateRecipe(loss, optimizers, actor, SoftUpdate(loss, tau=o.tau))
    if algo == "bc":
        initialize_lazy([actor], replay_buffer)
        loss = BCLoss(actor)
        return UpdateRecipe(
            loss, {"actor": (["loss_bc"], _adam(actor.parameters(), o.actor_lr))}, actor
        )
    if algo == "cql":
        initialize_lazy(modules, replay_buffer)
        # Kumar et al.'s locomotion settings: min_q_weight 5, 10 random actions,
        # no Lagrange, deterministic backup.
        loss = CQLLoss(
            actor, critic, loss_function="l2", min_q_weight=5.0, num_random=10
        )
        loss.make_value_estimator(gamma=o.gamma)
        optimizers = {
            "actor": _group(loss, ["loss_actor"], "actor_network_params", o.actor_lr),
            "critic": _group(
                loss, ["loss_qvalue", "loss_cql"], "qvalue_network_params", o.critic_lr
            ),
            "alpha": (["loss_alpha"], _adam([loss.log_alpha], o.alpha_lr)),
        }
        return UpdateRecipe(loss, optimizers, actor, SoftUpdate(loss, tau=o.tau))
    if algo == "iql":
        value = make_critic(cfg, in_keys=("observation",)).to(device)
        initialize_lazy(modules + [value], replay_buffer)
        # Kostrikov et al.'s locomotion settings: expectile 0.7, temperature 3.
        loss = IQLLoss(
            actor, critic, value, loss_function="l2", expectile=0.7, temperature=3.0
        )
        loss.make_value_estimator(gamma=o.gamma)
        optimizers = {
            "actor": _group(loss, ["loss_actor"], "actor_network_params", o.critic_lr),
            "critic": _group(
                loss, ["loss_qvalue"], "qvalue_network_params", o.critic_lr
            ),
            "value": _group(loss, ["loss_value"], "value_network_params", o.critic_lr),
        }
        return UpdateRecipe(loss, optimizers, actor, SoftUpdate(loss, tau=o.tau))
    # td3bc: Fujimoto & Gu's settings: alpha 2.5, policy noise 0.2 clipped at 0.5,
    # actor and targets updated every 2 critic steps.
    initialize_lazy(modules, replay_buffer)
    loss = TD3BCLoss(actor, critic, bounds=(-1.0, 1.0), loss_function="l2", alpha=2.5)
    loss.make_value_estimator(gamma=o.gamma)
    optimizers = {
        "actor": _group(loss, ["loss_actor"], "actor_network_params", o.critic_lr),
        "critic": _group(loss, ["loss_qvalue"], "qvalue_network_params", o.critic_lr),
    }
    return UpdateRecipe(
        loss, optimizers, actor, SoftUpdate(loss, tau=o.tau), every={"actor": 2}
    )


# ----------------------------------------------------------------- evaluation
def eval_seed(seed: int, step: int) -> int:
    """The evaluation env's seed after ``step`` updates of the run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@torch.no_grad()
def evaluate(env, policy, max_steps: int, seed: int) -> np.ndarray:
    """Returns of one deterministic episode per batched env copy (``tanh(mean)`` actions).

    The env is seeded with ``seed`` first: an evaluation does not depend on the
    ones before it, so a resumed run reports the scores of an uninterrupted one.
    """
    env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.rollout(
            max_steps, policy, break_when_any_done=False, auto_cast_to_device=True
        )
    reward = td["next", "reward"].reshape(*td.batch_size, -1).sum(-1)
    done = td["next", "done"].reshape(*td.batch_size, -1).any(-1)
    if reward.ndim == 1:  # a single, unbatched env
        reward, done = reward.unsqueeze(0), done.unsqueeze(0)
    # Count rewards up to and including each copy's first episode end.
    ended_before = (done.long().cumsum(-1) - done.long()) > 0
    return (reward * (~ended_before)).sum(-1).cpu().numpy()


# --------------------------------------------------------- logging, seeding
def make_logger(cfg: DictConfig, exp_name: str | None = None):
    if not cfg.logger.backend:
        return None, exp_name or "none"
    exp_name = exp_name or generate_exp_name(
        "MISA" if cfg.algorithm == "misa" else cfg.algorithm.upper(),
        cfg.logger.exp_name,
    )
    kwargs = {}
    if cfg.logger.backend == "wandb":
        kwargs = dict(
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project_name,
            group=cfg.logger.group_name,
            mode=cfg.logger.mode,
            id=exp_name,
            resume="allow",
        )
    logger = get_logger(
        cfg.logger.backend,
        logger_name=cfg.logger.log_dir,
        experiment_name=exp_name,
        **kwargs,
    )
    return logger, exp_name


def log_metrics(logger, metrics: dict, step: int) -> None:
    if logger is None:
        return
    for name, value in metrics.items():
        logger.log_scalar(name, float(value), step=step)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global random states, as tensors and plain values (loadable ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
