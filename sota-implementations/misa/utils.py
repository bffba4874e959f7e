"""Makers for the MISA offline script: data, env, networks, loss, optimisers, logger.

``misa_offline.py`` calls them top to bottom. The update is an
:class:`UpdateRecipe` (a loss module, one optimiser per group of loss entries, a
target-network updater, the policy to evaluate), so the same loop trains one
agent or a group of ``num_agents`` independent agents in one
:func:`torch.vmap` (:class:`~torchrl_misa.agents.AgentGroup`). The learning
benchmark builds TorchRL's baselines as recipes of their own
(``benchmarks/baselines.py``) and runs them through the same loop.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import math
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictSequential,
)
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
from torchrl.objectives import LossModule, SoftUpdate
from torchrl._utils import logger as torchrl_logger
from torchrl.record.loggers import generate_exp_name, get_logger

from torchrl_misa import MISALoss
from torchrl_misa.data import (
    dataset_env_id,
    DEMO_DATASET_PATH,
    load_offline_data,
    make_env,
    OfflineData,
    OfflineDataError,
)

# `${demo_dataset:}` in the configs: the shipped dataset, wherever the run starts.
OmegaConf.register_new_resolver(
    "demo_dataset", lambda: str(DEMO_DATASET_PATH), replace=True
)


# --------------------------------------------------------------------- config
_POSITIVE_INTS = (
    "num_agents",
    "replay_buffer.batch_size",
    "logger.eval_iter",
    "logger.eval_envs",
    "logger.eval_steps",
    "logger.log_interval",
    "logger.eval_last",
    "checkpoint.interval",
)


#: the learning rates: Adam takes any number >= 0
_LEARNING_RATES = (
    "optim.actor_lr",
    "optim.critic_lr",
    "optim.alpha_lr",
    "optim.alpha_prime_lr",
)
#: logger.backend values: "" or null for none, and the package each one needs
LOGGER_BACKENDS = {
    "": None,
    "csv": None,
    "tensorboard": "tensorboard",
    "wandb": "wandb",
}
_ACTIVATIONS = ("relu", "elu", "tanh")
_INITS = ("authors", "torch")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A setting the script cannot run with; the message names it and what to pass."""


def _non_finite(node, prefix: str = "") -> list[tuple[str, float]]:
    """``(key, value)`` of every NaN or infinite number in a config container."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if isinstance(node, float) and not math.isfinite(node):
            return [(prefix, node)]
        return []
    found = []
    for key, value in items:
        name = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}"
        found += _non_finite(value, name.lstrip("."))
    return found


def _is_misa(cfg: DictConfig) -> bool:
    return cfg.get("algorithm") in (None, "misa")


def validate_config(cfg: DictConfig) -> None:
    """Raises a :class:`ConfigError` that lists every setting the run cannot start with.

    Called before any data is loaded, so a typo costs seconds, not a download:
    NaN or infinite numbers anywhere, counts that are not positive integers,
    ``loss.gamma`` outside ``[0, 1]``, ``loss.tau`` outside ``(0, 1]``,
    negative learning rates, ``replay_buffer.clip_actions`` outside ``(0, 1]``,
    an unknown ``logger.backend`` (or one whose package is missing), unknown
    activations or ``network.init``, and, for MISA, every ``loss.*`` option
    with :class:`~torchrl_misa.MISALoss`'s own rules.
    """
    problems = []
    bad = {}
    for key, value in _non_finite(OmegaConf.to_container(cfg, resolve=False)):
        bad[key] = value
        problems.append(f"{key}={_show(value)}: must be a finite number")

    def check(key: str, ok, rule: str) -> None:
        if key in bad:  # reported above
            return
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            bad[key] = value
            problems.append(f"{key}={_show(value)}: {rule}")

    for key in _POSITIVE_INTS:
        check(
            key,
            lambda v: isinstance(v, int) and _is_number(v) and v > 0,
            "must be a positive integer",
        )
    online = OmegaConf.select(cfg, "online.frames")
    check(
        "optim.gradient_steps",
        lambda v: isinstance(v, int) and _is_number(v) and v >= (0 if online else 1),
        "must be a positive integer (0 only with an online phase, online.frames > 0)",
    )
    check(
        "optim.num_threads",
        lambda v: v is None or (isinstance(v, int) and _is_number(v) and v > 0),
        "torch's CPU threads: a positive integer, or null for torch's default",
    )
    check(
        "env.seed",
        lambda v: isinstance(v, int) and _is_number(v) and 0 <= v < 2**32,
        "must be an integer in [0, 2**32) (numpy's seeds)",
    )
    check(
        "loss.gamma",
        lambda v: _is_number(v) and 0 <= v <= 1,
        "the discount must lie in [0, 1]",
    )
    check(
        "loss.tau",
        lambda v: _is_number(v) and 0 < v <= 1,
        "the target networks' update rate must lie in (0, 1]",
    )
    for key in _LEARNING_RATES:
        check(key, lambda v: _is_number(v) and v >= 0, "must be a number >= 0")
    check(
        "replay_buffer.clip_actions",
        lambda v: v is None or (_is_number(v) and 0 < v <= 1),
        "actions are clipped to [-c, c]: pass a number in (0, 1] (e.g. 0.999), "
        "or null for no clipping",
    )
    check(
        "loss.alpha_init",
        lambda v: _is_number(v) and v > 0,
        "the temperature must start above 0 (its log is trained)",
    )
    check(
        "loss.target_entropy",
        lambda v: v == "auto" or _is_number(v),
        "pass loss.target_entropy=auto (minus the action dimension) or a number",
    )
    for key in ("network.actor_activation", "network.critic_activation"):
        check(
            key, lambda v: v in _ACTIVATIONS, f"choose one of {', '.join(_ACTIVATIONS)}"
        )
    check("network.init", lambda v: v in _INITS, f"choose one of {', '.join(_INITS)}")
    backend = OmegaConf.select(cfg, "logger.backend")
    if backend is not None and backend not in LOGGER_BACKENDS:
        problems.append(
            f"logger.backend={backend}: choose one of csv, tensorboard, wandb, or "
            "logger.backend= (none)"
        )
    elif LOGGER_BACKENDS.get(backend) and not importlib.util.find_spec(
        LOGGER_BACKENDS[backend]
    ):
        problems.append(
            f"logger.backend={backend}: needs the {LOGGER_BACKENDS[backend]} package "
            f"(`pip install {LOGGER_BACKENDS[backend]}`), or pass logger.backend=csv"
        )
    if "online" in cfg:
        problems += check_online_config(cfg)
    if _is_misa(cfg) and not any(key.startswith("loss.") for key in bad):
        # the loss's own rules, before the data loads (not its fault twice)
        problem = _misa_loss_problem(cfg.loss)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems))


def check_online_config(cfg: DictConfig) -> list[str]:
    """What in ``online.*`` the run cannot start with (one line per setting)."""
    o = cfg.online
    problems = []

    def is_int(value, low):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    if not is_int(o.frames, 0):
        problems.append(f"online.frames={o.frames}: must be an integer >= 0")
    for key in ("envs", "frames_per_batch"):
        if not is_int(o[key], 1):
            problems.append(f"online.{key}={o[key]}: must be a positive integer")
    if problems or not o.frames:
        return problems
    if o.frames_per_batch % o.envs:
        problems.append(
            f"online.frames_per_batch={o.frames_per_batch}: must be a multiple of "
            f"online.envs={o.envs} (each env copy steps frames_per_batch / envs times)"
        )
    if o.frames % o.frames_per_batch:
        problems.append(
            f"online.frames={o.frames}: must be a multiple of online.frames_per_batch="
            f"{o.frames_per_batch}"
        )
    utd = o.utd
    updates = utd * o.frames_per_batch if isinstance(utd, (int, float)) else None
    if updates is None or updates <= 0 or updates != int(updates):
        problems.append(
            f"online.utd={utd}: updates per collected frame; utd * "
            f"online.frames_per_batch must be a positive integer"
        )
    fraction = o.offline_fraction
    if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        problems.append(
            f"online.offline_fraction={fraction}: the dataset's share of each batch, "
            "in [0, 1) (0: online transitions only)"
        )
    return problems


def _misa_loss_problem(loss_cfg: DictConfig) -> str | None:
    """What :class:`~torchrl_misa.MISALoss` would refuse in ``loss.*``, or ``None``."""
    check_options = MISALoss.check_options
    options = OmegaConf.to_container(loss_cfg, resolve=True)
    names = inspect.signature(check_options).parameters
    kwargs = {k: v for k, v in options.items() if k in names}
    # the config's mi_critic is a switch; the loss takes the network itself
    kwargs["mi_critic"] = object() if options.get("mi_critic") else None
    kwargs.update(reduction="mean", scalar_output_mode=None)
    kwargs.setdefault("use_prioritized_weights", "auto")
    missing = [name for name in names if name not in kwargs]
    if missing:  # an option this check does not know of: left to the loss
        return None
    try:
        check_options(**kwargs)
    except ValueError as err:
        return f"loss.{err}"
    return None


def _show(value) -> str:
    """A value as written on hydra's command line (``null`` for None)."""
    return "null" if value is None else str(value)


# ----------------------------------------------------------------------- data
def make_offline_data(cfg: DictConfig, device: torch.device) -> OfflineData:
    """The dataset's replay buffer and what goes with it, or a clear stop when it cannot be had.

    A sample holds ``replay_buffer.batch_size`` transitions per agent.
    """
    rb_cfg = cfg.replay_buffer
    try:
        data = load_offline_data(
            rb_cfg.dataset,
            rb_cfg.batch_size * cfg.num_agents,
            clip_actions=rb_cfg.clip_actions,
            reward_processing=rb_cfg.reward_processing,
            normalize_observations=rb_cfg.normalize_observations,
            device=device,
            root=rb_cfg.root,
        )
    except OfflineDataError as err:  # its message says what to do
        raise ConfigError(
            f"replay_buffer.dataset={rb_cfg.dataset}: {err}\n\nTo train on other "
            "data: pass a local D4RL-format file, `replay_buffer.dataset="
            "/path/to/file.hdf5`, or run the demo on the dataset shipped in the "
            "repo: `python sota-implementations/misa/misa_offline.py preset=demo`."
        ) from None
    shape = data.replay_buffer.storage[:1]["observation"].shape[1:]
    if len(shape) != 1:
        raise ConfigError(
            f"replay_buffer.dataset={rb_cfg.dataset}: observations of shape "
            f"{list(shape)}; the script's networks are MLPs over flat vectors. "
            "Flatten them in the file (e.g. reshape to [N, -1]), or build your own "
            "networks around torchrl_misa.MISALoss."
        )
    return data


def make_environment(
    cfg: DictConfig,
    data: OfflineData,
    device: torch.device,
    per_agent: int | None = None,
):
    """The evaluation env: ``logger.eval_envs`` copies of the task per agent, batched.

    Copies ``[i * n, (i + 1) * n)`` run agent ``i``'s policy (``n``:
    ``per_agent``, default ``logger.eval_envs``; the online phase's collector
    passes ``online.envs``). A :class:`~torchrl.envs.SerialEnv` steps them in
    this process (worker processes cost more than they save for small tasks
    on a few cores). The dataset's observation normaliser (if any) is
    appended, so the policy sees observations as in training.
    """
    env_id = cfg.env.name or dataset_env_id(data)
    make = functools.partial(make_env, env_id, obs_norm=data.obs_norm)
    copies = (per_agent or cfg.logger.eval_envs) * cfg.num_agents
    env = SerialEnv(copies, make) if copies > 1 else make()
    return env.to(device)  # seeded by each evaluation (see `evaluate`)


# ------------------------------------------------------------------- networks
class _ActorHead(nn.Module):
    """Mean and std of the policy as in the authors' code (github.com/sail-sg/MISA).

    ``log_std = m * raw + b`` clipped to ``[-5, 2]``, the mean clipped to
    ``[-9, 9]``. With ``trainable_log_std`` the multiplier ``m`` and offset
    ``b`` are parameters starting at 1 and -1, as the authors'; otherwise they
    stay 1 and -1.
    """

    def __init__(self, trainable_log_std: bool = False) -> None:
        super().__init__()
        self.trainable_log_std = trainable_log_std
        if trainable_log_std:
            self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
            self.log_std_offset = nn.Parameter(torch.tensor(-1.0))

    def forward(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, -1)
        if self.trainable_log_std:
            log_std = self.log_std_multiplier * raw + self.log_std_offset
        else:
            log_std = raw - 1.0
        return loc.clamp(-9.0, 9.0), log_std.clamp(-5.0, 2.0).exp()


# flax's lecun_normal: a normal truncated at two standard deviations, divided by
# the truncated normal's std so that the weights' variance is 1 / fan_in
_TRUNCATED_NORMAL_STD = 0.87962566103423978


@torch.no_grad()
def authors_init_(module: nn.Module) -> nn.Module:
    """The authors' initialisation of an MLP, in place: flax's defaults and small heads.

    Hidden layers: lecun-normal weights (a normal truncated at two standard
    deviations, variance ``1 / fan_in``; torch's default has ``1 / (3 fan_in)``),
    zero biases. Last layer: variance scaling 1e-2 (uniform, fan-in), zero
    bias. Lazy layers must have their shapes (see :func:`initialize_lazy`).
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        fan_in = layer.in_features
        if i == len(linears) - 1:
            bound = float(np.sqrt(3 * 1e-2 / fan_in))
            nn.init.uniform_(layer.weight, -bound, bound)
        else:
            std = float(np.sqrt(1.0 / fan_in)) / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
        nn.init.zeros_(layer.bias)
    return module


@torch.no_grad()
def _authors_init_critics_(loss: MISALoss, critic: nn.Module) -> None:
    """Each critic of the loss's ensemble from :func:`authors_init_`.

    TorchRL's ensemble of ``num_qvalue_nets`` critics redraws each copy
    uniformly within the range of the module's parameters; this draws every
    copy from the authors' initialisation instead. The targets start as these
    copies when :func:`build_recipe` attaches the loss's ``SoftUpdate``.
    """
    for i in range(loss.num_qvalue_nets):
        member = authors_init_(copy.deepcopy(critic))
        for key, value in TensorDict.from_module(member).items(True, True):
            loss.qvalue_network_params.get(key).data[i].copy_(value)


def _mlp(out_features: int, cells, activation: str) -> MLP:
    act = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}[activation]
    return MLP(out_features=out_features, num_cells=list(cells), activation_class=act)


def make_actor(
    cfg: DictConfig,
    action_dim: int,
    deterministic: bool = False,
    trainable_log_std: bool | None = None,
):
    """A SAC-style tanh-Gaussian actor (or a tanh-deterministic one for TD3+BC).

    ``trainable_log_std``: see :class:`_ActorHead`; ``None`` reads
    ``cfg.network.trainable_log_std`` (``False`` when absent).
    """
    if trainable_log_std is None:
        trainable_log_std = bool(cfg.network.get("trainable_log_std", False))
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
            distribution_kwargs={
                "low": spec.space.low,
                "high": spec.space.high,
                # TanhDelta refuses its safe tanh inside torch.compile
                "safe": not cfg.get("compile", {}).get("compile", False),
            },
            default_interaction_type=ExplorationType.DETERMINISTIC,
        )
    net = nn.Sequential(
        _mlp(
            2 * action_dim, cfg.network.actor_hidden_sizes, cfg.network.actor_activation
        ),
        _ActorHead(trainable_log_std),
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
    """Runs each module once on two transitions so that lazy layers get their shapes.

    The first two stored transitions, not a sample: building a network draws
    the same random numbers whatever the batch size (a group's agent ``i``
    starts as the single run seeded ``seed + i``).
    """
    batch = replay_buffer[:2].to("cpu")  # modules are built on the CPU
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for module in modules:
            module(batch.clone())


def bounds_to_device(actor: nn.Module, device) -> None:
    """Gives the actor's TanhNormal its ``[-1, 1]`` bounds as tensors on ``device``.

    With Python-number bounds, TorchRL's ``TanhNormal`` makes tensors of them
    on every call: a copy from the host per call, which a CUDA graph cannot
    capture. ``Module.to`` does not move ``distribution_kwargs``.
    """
    spec = Bounded(-1.0, 1.0, actor.spec["action"].shape, device=device)
    for module in actor.modules():
        if isinstance(module, ProbabilisticTensorDictModule):
            kwargs = dict(module.distribution_kwargs or {})
            kwargs.update(low=spec.space.low, high=spec.space.high)
            module.distribution_kwargs = kwargs


# --------------------------------------------------------------- update step
@dataclass
class UpdateRecipe:
    """What one gradient step needs: the loss, its optimisers, targets, the policy.

    Attributes:
        loss_module: returns a TensorDict with the ``loss_*`` entries below; an
            :class:`~torchrl_misa.agents.AgentGroup` returns them per agent.
        optimizers: ``name -> (loss keys, optimiser)``: the optimiser steps on the
            sum of those entries' gradients.
        policy: the module evaluated in the environment (for a group: every
            agent's policy, on its own slice of the batched env).
        target_updater: has ``step()``: Polyak averaging of the target
            networks, or ``None``.
        every: ``name -> n``: that group steps every ``n`` updates (default 1),
            e.g. TD3+BC's delayed actor.
        num_agents: agents trained by this recipe.
    """

    loss_module: nn.Module
    optimizers: dict
    policy: nn.Module
    target_updater: object | None = None
    every: dict = field(default_factory=dict)
    num_agents: int = 1

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

    def active_groups(self, step: int) -> tuple[str, ...]:
        """The optimiser groups that step at update ``step``."""
        return tuple(
            name for name in self.optimizers if step % self.every.get(name, 1) == 0
        )

    def sample(self, replay_buffer) -> TensorDictBase:
        """One batch: ``[B]``, or ``[num_agents, B / num_agents]`` for a group.

        A group's agents get independent draws: agent ``i`` the rows
        ``[i * B / num_agents, (i + 1) * B / num_agents)`` of one sample.
        """
        batch = replay_buffer.sample()
        if self.num_agents == 1:
            return batch
        return batch.reshape(self.num_agents, -1)


def update_step(recipe: UpdateRecipe, batch, active: tuple[str, ...]):
    """One gradient step of the ``active`` optimiser groups; the losses, detached.

    A group's losses have one entry per agent: their sum trains every agent,
    each on its own loss (no gradient crosses agents).
    """
    loss_td = recipe.loss_module(batch)
    groups = [recipe.optimizers[name] for name in active]
    total = sum(loss_td[k].sum() for keys, _ in groups for k in keys)
    total.backward()
    for _, opt in groups:
        opt.step()
    # Groups that did not step this time must not carry gradients into the next.
    for _, opt in recipe.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if recipe.target_updater is not None:
        recipe.target_updater.step()
    return loss_td.detach()


def compile_update(update: Callable, cfg: DictConfig) -> Callable:
    """``update`` under :func:`torch.compile`, MISA's HMC chain inside the graph.

    With ``loss.compile_sampler=false`` the chain is traced as one ``scan``
    over its transitions (compiled once, whatever their number). Inductor
    lowers that scan to a loop that reads its counter on the host, so dynamo
    must be allowed to capture scalar reads. With ``compile.cudagraphs=true``
    the loss is built with ``compile_sampler=true`` instead (see
    :func:`make_misa_update`): the chain stays out of the graph and runs its
    compiled transition in a Python loop, which a CUDA graph captures whole.
    """
    if update_device_is_cpu(cfg) and not _cpp_compiler():
        torchrl_logger.warning(
            "compile.compile=true: no C++ compiler found (torch.compile needs one on "
            "the CPU; install g++ or set CXX); running the update eagerly."
        )
        return update
    # imported here: a submitit job pickles this function, not torch's config module
    from torch._dynamo import config as dynamo_config

    dynamo_config.capture_scalar_outputs = True
    # tensordict 0.14 reads a dynamo flag torch has deprecated: not the user's concern
    warnings.filterwarnings(
        "ignore", ".*inline_inbuilt_nn_modules is deprecated", FutureWarning
    )
    return torch.compile(update, mode=cfg.compile.compile_mode)


def update_device_is_cpu(cfg: DictConfig) -> bool:
    device = cfg.optim.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device).type == "cpu"


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU, if there is one."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def capture_update(recipe: UpdateRecipe, update: Callable) -> Callable:
    """``update(batch, active)`` replayed from CUDA graphs, one per set of groups.

    The whole update (losses, backward, optimiser steps, target update) is
    captured, as in TorchRL's recipes: a graph of the loss alone would hold no
    autograd graph for the backward. ``active`` is a tuple of names, not a
    tensor, so each distinct tuple (e.g. TD3+BC's delayed actor steps) gets
    its own :class:`~tensordict.nn.CudaGraphModule`. The optimisers become
    ``capturable`` (their step counters on the device, as the graph needs);
    counters restored from a checkpoint move there too.
    """
    from tensordict.nn import CudaGraphModule

    for _, optimizer in recipe.optimizers.values():
        for group in optimizer.param_groups:
            group["capturable"] = True
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if "step" in state:
                    state["step"] = state["step"].to(param.device)
    graphs = {}

    def captured(batch, active):
        if active not in graphs:
            graphs[active] = CudaGraphModule(
                functools.partial(update, active=active), warmup=10
            )
        return graphs[active](batch)

    return captured


class _GroupTargets:
    """``SoftUpdate.step()`` for every agent of a group."""

    def __init__(self, group, tau: float) -> None:
        self.group, self.tau = group, tau

    def step(self) -> None:
        self.group.update_targets(self.tau)


class GroupPolicy(nn.Module):
    """The policies of a group's agents on one batched env, in one vmapped call.

    Args:
        actor: one agent's actor module (its own parameters are not used).
        params: the actors' parameters stacked along a leading agent dimension
            (the group's ``actor_network_params``: trained in place).
        num_agents: agents; the env's batch is split into that many equal
            slices, slice ``i`` acted on by agent ``i``.
    """

    def __init__(self, actor: nn.Module, params: TensorDictBase, num_agents: int):
        super().__init__()
        self.__dict__["actor"] = actor  # a template, not a submodule
        self.__dict__["params"] = params
        self.num_agents = num_agents
        # A probabilistic actor's distribution has no parameters: it acts on
        # every agent's output at once, outside the vmap, where sampling
        # (exploration) can draw fresh noise for each row.
        self.__dict__["net"], self.__dict__["head"] = actor, None
        if isinstance(actor, ProbabilisticTensorDictSequential):
            self.__dict__["net"] = TensorDictSequential(*actor.module[:-1])
            self.__dict__["head"] = actor.module[-1]
        self._vmapped = torch.vmap(self._one, (0, 0), randomness="different")

    def _one(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        with params.to_module(self.actor):
            return self.net(td)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        shape = tensordict.batch_size
        per_agent = tensordict.reshape(self.num_agents, -1)
        out = self._vmapped(self.params, per_agent).reshape(shape)
        return out if self.head is None else self.head(out)


def _entries(loss: LossModule, names) -> list:
    """The tensors of ``loss.<name>`` for each name (a parameter or a TensorDict of them)."""
    out = []
    for name in names:
        entry = getattr(loss, name)
        out += (
            list(entry.values(True, True))
            if isinstance(entry, TensorDictBase)
            else [entry]
        )
    return out


def build_recipe(
    make_loss: Callable[[], tuple[LossModule, nn.Module]],
    groups: dict,
    *,
    num_agents: int,
    seed: int,
    tau: float | None,
    every: dict | None = None,
) -> UpdateRecipe:
    """One agent, or a group of ``num_agents``, of the loss ``make_loss`` builds.

    Args:
        make_loss: returns a fresh ``(loss, policy)``; agent ``i`` of a group is
            built after ``torch.manual_seed(seed + i)``, so it starts where a
            single run seeded ``seed + i`` starts.
        groups: ``name -> (loss keys, loss entries trained, learning rate)``,
            e.g. ``"critic": (["loss_qvalue"], ["qvalue_network_params"], 3e-4)``.
        num_agents: 1 for a plain loss module.
        seed: the run's seed.
        tau: Polyak rate of the target networks, ``None`` when there are none.
        every: ``name -> n``: that optimiser steps every ``n`` updates.
    """
    if num_agents == 1:
        torch.manual_seed(seed)  # where agent 0 of a group starts
        loss, policy = make_loss()
        optimizers = {
            name: (keys, torch.optim.Adam(_entries(loss, entries), lr=lr))
            for name, (keys, entries, lr) in groups.items()
        }
        targets = SoftUpdate(loss, tau=tau) if tau is not None else None
        return UpdateRecipe(loss, optimizers, policy, targets, dict(every or {}))
    # agent groups are optional: a single run needs nothing beyond TorchRL
    from torchrl_misa.agents import AgentGroup

    losses, policies = [], []
    for i in range(num_agents):
        torch.manual_seed(seed + i)
        loss, policy = make_loss()
        if tau is not None:
            # copies the critics into their targets, as for one agent; the
            # group then steps every agent's targets at once
            SoftUpdate(loss, tau=tau)
        losses.append(loss)
        policies.append(policy)
    group = AgentGroup(losses)
    optimizers = {
        name: (keys, torch.optim.Adam(group.parameters_of(*entries), lr=lr))
        for name, (keys, entries, lr) in groups.items()
    }
    policy = GroupPolicy(
        policies[0], group.params.get("actor_network_params"), num_agents
    )
    targets = _GroupTargets(group, tau) if tau is not None else None
    return UpdateRecipe(
        group, optimizers, policy, targets, dict(every or {}), num_agents
    )


def make_misa_update(
    cfg: DictConfig, data: OfflineData, action_dim: int, device
) -> UpdateRecipe:
    """MISA's :class:`UpdateRecipe`: ``cfg.num_agents`` agents seeded ``env.seed + i``."""
    o, loss_cfg = cfg.optim, cfg.loss
    if cfg.network.init not in ("authors", "torch"):
        raise ConfigError(
            f"network.init={cfg.network.init}: choose authors (flax's lecun-normal "
            "layers, small heads, zero biases) or torch (torch's defaults)"
        )
    authors_init = cfg.network.init == "authors"
    kwargs = OmegaConf.to_container(loss_cfg, resolve=True)
    for key in ("gamma", "tau", "mi_critic"):
        kwargs.pop(key)
    if cfg.compile.compile and cfg.compile.cudagraphs:
        # a scanned chain reads its counter on the host: not capturable
        kwargs["compile_sampler"] = True

    def make_loss():
        # Built and initialised on the CPU, then moved: the same networks
        # (and random draws) whatever the device.
        actor = make_actor(cfg, action_dim)
        critic = make_critic(cfg)
        mi_critic = make_critic(cfg) if loss_cfg.mi_critic else None
        networks = [m for m in (actor, critic, mi_critic) if m is not None]
        initialize_lazy(networks, data.replay_buffer)
        if authors_init:
            for network in networks:
                authors_init_(network)
        for network in networks:
            network.to(device)
        bounds_to_device(actor, device)
        loss = MISALoss(actor, critic, mi_critic=mi_critic, **kwargs)
        if authors_init:
            _authors_init_critics_(loss, critic)
        loss.make_value_estimator(gamma=loss_cfg.gamma)
        return loss, actor

    groups = {
        "actor": (["loss_actor"], ["actor_network_params"], o.actor_lr),
        "critic": (["loss_qvalue"], ["qvalue_network_params"], o.critic_lr),
        "alpha": (["loss_alpha"], ["log_alpha"], o.alpha_lr),
    }
    if loss_cfg.fixed_alpha:  # alpha is a buffer then: nothing for Adam to step
        del groups["alpha"]
    if loss_cfg.lagrange_tau is not None:
        groups["alpha_prime"] = (
            ["loss_alpha_prime"],
            ["log_alpha_prime"],
            o.alpha_prime_lr,
        )
    if loss_cfg.mi_critic:
        groups["mi_critic"] = (
            ["loss_mi_critic"],
            ["mi_critic_network_params"],
            o.critic_lr,
        )
    return build_recipe(
        make_loss,
        groups,
        num_agents=cfg.num_agents,
        seed=cfg.env.seed,
        tau=loss_cfg.tau,
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
    A copy whose episode has ended stops stepping, and the rollout stops when
    every copy's has (or after ``max_steps``): nothing past the first episode
    counts, and a 200-step Pendulum episode costs 200 steps, not ``max_steps``.
    """
    env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.rollout(
            max_steps,
            policy,
            break_when_any_done=False,
            break_when_all_done=True,
            auto_cast_to_device=True,
        )
    reward = td["next", "reward"].reshape(*td.batch_size, -1).sum(-1)
    done = td["next", "done"].reshape(*td.batch_size, -1).any(-1)
    if reward.ndim == 1:  # a single, unbatched env
        reward, done = reward.unsqueeze(0), done.unsqueeze(0)
    # Count rewards up to and including each copy's first episode end.
    ended_before = (done.long().cumsum(-1) - done.long()) > 0
    return (reward * (~ended_before)).sum(-1).cpu().numpy()


# --------------------------------------------------------- logging, seeding
def make_logger(cfg: DictConfig, name: str, exp_name: str | None = None):
    """TorchRL's logger of ``cfg.logger.backend`` (``None`` for ``""``) and its experiment name."""
    if not cfg.logger.backend:
        return None, exp_name or "none"
    exp_name = exp_name or generate_exp_name(name, cfg.logger.exp_name)
    kwargs = {}
    if cfg.logger.backend == "wandb":
        kwargs = {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "project": cfg.logger.project_name,
            "group": cfg.logger.group_name,
            "mode": cfg.logger.mode,
            "id": exp_name,
            "resume": "allow",
        }
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


def set_threads(num_threads: int | None) -> None:
    """torch's intra-op CPU threads (``optim.num_threads``; ``None`` keeps torch's default)."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)


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
