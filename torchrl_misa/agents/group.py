"""``AgentGroup``: N independent agents of one loss module, trained as one batched module."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictParams
from torch import nn, Tensor

from torchrl.objectives import LossModule

from torchrl_misa.objectives import MISALoss
from torchrl_misa.objectives.misa import run_sampler

from .compat import make_vmap_compatible

RANDOMNESS = ("different", "same")
# Plain attributes that a loss may hold and that may differ between agents.
_PLAIN = (bool, int, float, str, type(None))


class AgentGroup(nn.Module):
    """N independent copies of a TorchRL loss module, evaluated in one :func:`torch.vmap`.

    Every parameter and buffer of the agents' loss modules (networks, target
    networks, temperatures, value-estimator constants) is stacked along a
    leading agent dimension in :attr:`params`; :meth:`forward` runs each
    agent's loss on its own batch, with its own random draws, in one batched
    call. Agents interact nowhere: the gradient of agent ``i``'s loss is zero
    on every other agent's parameters, and an optimiser whose update is
    elementwise (Adam, SGD, with or without weight decay) trains each agent
    exactly as a separate optimiser would. Optimisers that couple elements
    (gradient clipping by a global norm, LBFGS) do not: clip each agent's
    norm separately.

    Plain-number options of the loss (``float`` attributes such as
    ``min_q_weight`` or ``bc_weight``) may differ between agents: build each
    loss with its own value and the group passes them through vmap as a
    per-agent tensor (:attr:`per_agent_options`). This needs the loss to use
    them in arithmetic only; one that branches on such a value raises an error
    from vmap. Every other option (sizes, estimator names, flags) must be
    equal across agents.

    Args:
        losses: one loss module per agent, all of the same type and structure
            (typically built by one function with a different seed, see
            :meth:`from_factory`). Their parameters are copied into the group;
            the modules themselves are not used afterwards.

    Keyword Args:
        randomness (str): ``"different"`` (default): every agent draws its own
            random numbers (policy samples, MCMC momenta). ``"same"``: all
            agents see the draws a single run would make from the same
            generator state (to compare agents with single runs).
        batched_sampler (bool, optional): for :class:`~torchrl_misa.objectives.MISALoss`,
            draw every agent's HMC samples in one sampler call outside the
            vmap (agents as a batch dimension, one adapted step size per
            agent), then run the vmapped loss on them. The sampler's gradient
            steps then run as plain batched autograd instead of ``torch.func``
            under vmap, and with ``compile_sampler=True`` its compiled
            transition covers all agents; the vmapped loss, free of the
            sampler's graph break, compiles as one graph under
            :func:`torch.compile`. The sampler's momenta are drawn for all
            agents at once, so they differ between agents even with
            ``randomness="same"``. ``None`` (default): on for a MISA loss with
            the unbiased correction and ``randomness="different"`` whose
            sampler options (``step_size``, ``target_accept``) are equal
            across agents and that was given no ``sampler`` of its own; off
            for every other loss. The samples reach each agent's loss through
            its public ``sampler`` argument
            (:meth:`~torchrl_misa.objectives.MISALoss.set_sampler`).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
        >>> from torchrl.modules import TanhNormal, ValueOperator
        >>> from torchrl.objectives import CQLLoss
        >>> from torchrl_misa.agents import AgentGroup
        >>> def make_loss():
        ...     actor = ProbabilisticActor(
        ...         TensorDictModule(
        ...             nn.Sequential(MLP(3, 4, num_cells=[8]), NormalParamExtractor()),
        ...             in_keys=["observation"], out_keys=["loc", "scale"]),
        ...         in_keys=["loc", "scale"], spec=Bounded(-1.0, 1.0, (2,)),
        ...         distribution_class=TanhNormal)
        ...     critic = ValueOperator(MLP(5, 1, num_cells=[8]), in_keys=["observation", "action"])
        ...     loss = CQLLoss(actor, critic, loss_function="l2")
        ...     loss.make_value_estimator(gamma=0.99)
        ...     return loss
        >>> group = AgentGroup.from_factory(make_loss, num_agents=3, seed=0)
        >>> n, b = 3, 16  # agents, transitions per agent
        >>> data = TensorDict({
        ...     "observation": torch.randn(n, b, 3),
        ...     "action": torch.rand(n, b, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, b, 3),
        ...     ("next", "reward"): torch.randn(n, b, 1),
        ...     ("next", "done"): torch.zeros(n, b, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, b, 1, dtype=torch.bool),
        ... }, [n, b])
        >>> out = group(data)
        >>> out["loss_qvalue"].shape  # one loss per agent
        torch.Size([3])
        >>> critic_optim = torch.optim.Adam(group.parameters_of("qvalue_network_params"))
        >>> (out["loss_qvalue"] + out["loss_cql"]).sum().backward()
        >>> critic_optim.step()
        >>> group.update_targets(tau=0.005)
    """

    def __init__(
        self,
        losses: Sequence[LossModule],
        *,
        randomness: str = "different",
        batched_sampler: bool | None = None,
    ) -> None:
        super().__init__()
        losses = list(losses)
        _check_losses(losses)
        if randomness not in RANDOMNESS:
            raise ValueError(
                f"randomness must be one of {RANDOMNESS}, got {randomness!r}."
            )
        self.num_agents = len(losses)
        self._loss_type = type(losses[0])
        self.randomness = randomness
        self.per_agent_options = _per_agent_options(losses)
        # Buffers built on the CPU next to parameters on a GPU (TorchRL's value
        # estimators keep gamma there and move it at first use; stacked, the
        # CPU copy would come back on every call): bring them to the
        # parameters' device, so that an update copies nothing from the host
        # (a copy CUDA-graph capture refuses).
        device = _device(losses[0])
        for loss in losses:
            loss.to(device)
        try:
            params = TensorDict.from_modules(*losses, as_module=True)
        except Exception as err:
            raise ValueError(
                "AgentGroup: the losses' parameters and buffers could not be stacked "
                f"({err}); build every agent with the same network sizes and options."
            ) from err
        # every parameter and buffer of the loss, with a leading agent dimension
        self.params = params
        template = make_vmap_compatible(copy.deepcopy(losses[0]))
        # Its own tensors are placeholders (each call swaps one agent's slice of
        # `params` in, then puts them back without grad): without grad from the
        # start, so a compiled forward's guards hold from the second call on.
        template.requires_grad_(False)
        # the group updates the targets itself (update_targets)
        for name in template._has_update_associated:
            template._has_update_associated[name] = True
        # Not a submodule: its own tensors are replaced by one agent's slice of
        # `params` during each call, and must stay out of parameters().
        self.__dict__["_template"] = template
        self._options = TensorDict(dict(self.per_agent_options), [self.num_agents])
        self.batched_sampler = _batched_sampler(
            template, randomness, self.per_agent_options, batched_sampler
        )
        # The template's sampler hands each agent its slice of the samples
        # drawn for all agents (forward sets them, _agent_forward passes them).
        self._agent_samples = _AgentSamples()
        if self.batched_sampler:
            template.set_sampler(self._agent_samples)
        presampled_dim = 0 if self.batched_sampler else None
        self._vmapped = torch.vmap(
            self._agent_forward, (0, 0, 0, presampled_dim), randomness=randomness
        )

    @classmethod
    def from_factory(
        cls,
        make_loss: Callable[[], LossModule],
        num_agents: int,
        *,
        seed: int = 0,
        **kwargs,
    ) -> AgentGroup:
        """Builds agent ``i`` with ``make_loss()`` after ``torch.manual_seed(seed + i)``.

        Agent ``i`` starts from the parameters a single run seeded with
        ``seed + i`` would build.
        """
        if int(num_agents) != num_agents or num_agents < 1:
            raise ValueError(f"num_agents must be an integer >= 1, got {num_agents!r}.")
        losses = []
        for i in range(num_agents):
            torch.manual_seed(seed + i)
            losses.append(make_loss())
        return cls(losses, **kwargs)

    @property
    def loss_type(self) -> type:
        """The agents' loss class (as given, before any vmap adaptation)."""
        return self._loss_type

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Each agent's loss on its own batch.

        Args:
            tensordict: transitions of shape ``[num_agents, *batch]``: slice
                ``i`` is agent ``i``'s batch.

        Returns:
            the loss module's output, every entry with a leading agent
            dimension (``out["loss_actor"][i]`` is agent ``i``'s actor loss).
            Entries the loss writes into its input (e.g. ``"td_error"``) are
            not written back.
        """
        if tensordict.batch_dims < 2 or tensordict.batch_size[0] != self.num_agents:
            raise ValueError(
                f"AgentGroup: expected a batch of shape [num_agents={self.num_agents}, "
                f"batch, ...], got batch size {list(tensordict.batch_size)}. Sample "
                "num_agents * batch transitions and reshape them to "
                "[num_agents, batch]."
            )
        # a shallow copy: the locked TensorDictParams refuses the swaps made
        # inside the loss (its own to_module calls)
        params = self.params._param_td.copy()
        presampled = None
        if self.batched_sampler:
            presampled = _sample_all_agents(self._template, params, tensordict)
        return self._vmapped(params, self._options, tensordict, presampled)

    def _agent_forward(
        self,
        params: TensorDictBase,
        options: TensorDictBase,
        data: TensorDictBase,
        presampled: tuple[Tensor, TensorDictBase] | None,
    ) -> TensorDictBase:
        template = self._template
        saved = {name: getattr(template, name) for name in options.keys()}
        # LossModule caches detached parameter views; they belong to one call
        template.__dict__.pop("_cache", None)
        try:
            for name, value in options.items():
                setattr(template, name, value)
            self._agent_samples.samples = presampled
            restore = _swap_in(template, params)
            try:
                return template(data)
            finally:
                restore()
        finally:
            for name, value in saved.items():
                setattr(template, name, value)
            template.__dict__.pop("_cache", None)
            self._agent_samples.samples = None

    def parameters_of(self, *names: str) -> list[nn.Parameter]:
        """The stacked trainable parameters under ``names`` (e.g. ``"actor_network_params"``).

        For an optimiser group: ``torch.optim.Adam(group.parameters_of("log_alpha"), lr)``.
        """
        out = []
        for name in names:
            if name not in self.params.keys():
                raise KeyError(
                    f"AgentGroup: no entry {name!r}; the loss holds "
                    f"{sorted(self.params.keys())}."
                )
            entry = self.params.get(name)
            leaves = (
                entry.values(True, True)
                if isinstance(entry, TensorDictBase)
                else [entry]
            )
            out.extend(p for p in leaves if isinstance(p, nn.Parameter))
        return out

    def get_option(self, name: str) -> float:
        """The real-valued loss option ``name`` (agent 0's where agents differ)."""
        value = getattr(self._template, name, None)
        if name.startswith("_") or not isinstance(value, numbers.Real):
            raise AttributeError(
                f"AgentGroup: {name!r} is not a real-valued option of "
                f"{self._loss_type.__name__}."
            )
        return value

    def set_option(self, name: str, value: float) -> None:
        """Sets the real-valued loss option ``name`` (e.g. ``"bc_weight"``) of every agent.

        The group's counterpart of ``setattr(loss, name, value)`` on one loss:
        an option that differed between agents takes ``value`` for all.
        """
        current = self.get_option(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"AgentGroup: {name} must be a real number, got {value!r}.")
        setattr(self._template, name, type(current)(value))
        if name in self.per_agent_options:
            self.per_agent_options[name].fill_(value)
            self._options.get(name).fill_(value)  # the copy the vmapped call reads

    @property
    def target_names(self) -> list[str]:
        """Entries of :attr:`params` holding target networks (``target_<name>_params``)."""
        keys = self.params.keys()
        return [
            k
            for k in keys
            if k.startswith("target_") and k.endswith("_params") and k[7:] in keys
        ]

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """Polyak averaging of every agent's targets, as :class:`~torchrl.objectives.SoftUpdate`.

        ``target <- target + (1 - eps) * (source - target)`` with ``eps = 1 - tau``,
        for the targets whose source is trained.
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}.")
        weight = 1 - (1 - tau)  # SoftUpdate's arithmetic, bit for bit
        targets, sources = [], []
        for name in self.target_names:
            target, source = self.params.get(name), self.params.get(name[7:])
            for key, src in source.items(True, True):
                if isinstance(src, nn.Parameter) and src.requires_grad:
                    targets.append(target.get(key).data)
                    sources.append(src.data)
        if targets:
            torch._foreach_lerp_(targets, sources, weight)

    @torch.no_grad()
    def copy_agent_to(self, index: int, loss: LossModule) -> LossModule:
        """Writes agent ``index``'s parameters and buffers into ``loss`` (same structure)."""
        if not -self.num_agents <= index < self.num_agents:
            raise IndexError(
                f"agent index {index} out of range for {self.num_agents} agents."
            )
        TensorDict.from_module(loss).data.update_(self.params.data[index])
        return loss


class _AgentSamples:
    """The ``sampler`` of the group's MISA loss: returns the samples drawn for this agent.

    Inside the group's vmap, ``samples`` holds this agent's slice of the
    samples and info that :func:`_sample_all_agents` drew for every agent.
    """

    def __init__(self) -> None:
        self.samples: tuple[Tensor, TensorDictBase] | None = None

    def __call__(self, *args, **kwargs) -> tuple[Tensor, TensorDictBase]:
        if self.samples is None:
            raise RuntimeError(
                "AgentGroup: the agents' HMC samples are drawn by the group's "
                "forward; its loss module cannot be called on its own."
            )
        return self.samples


# MISALoss options read by its sampler: an agent group draws every agent's
# samples in one call only when they are equal across agents.
_SAMPLER_OPTIONS = ("step_size", "target_accept")


def _batched_sampler(
    template: LossModule, randomness: str, options: dict, requested: bool | None
) -> bool:
    """Whether the group draws MISA's HMC samples outside its vmap (see ``batched_sampler``)."""
    reasons = []
    if not isinstance(template, MISALoss):
        reasons.append(f"{type(template).__name__} has no HMC sampler")
    elif not template.unbiased_correction:
        reasons.append("the loss runs no sampler (unbiased_correction=False)")
    elif template.sampler is not None:
        reasons.append("the loss was given its own sampler")
    differing = sorted(set(_SAMPLER_OPTIONS) & set(options))
    if differing:
        reasons.append(f"the sampler options {differing} differ between agents")
    if requested is None:
        return not reasons and randomness == "different"
    if requested and reasons:
        raise ValueError(
            "AgentGroup: batched_sampler=True is not possible: "
            + "; ".join(reasons)
            + ". Leave batched_sampler unset."
        )
    return bool(requested)


def _sample_all_agents(
    template: MISALoss, params: TensorDictBase, data: TensorDictBase
) -> tuple[Tensor, TensorDictBase]:
    """Every agent's HMC samples of MISA's tilted policy, in one sampler call.

    Returns the samples ``[N, k, *B, d]`` and the sampler's info ``[N, *B]``;
    agent ``i``'s target is its own policy and critics, and its step size is
    adapted on its own chains. Under an outer :func:`torch.compile` the chain
    is one scan in the graph; with ``compile_sampler=True`` it stays out of the
    graph and each transition runs compiled (as in :class:`MISALoss`).
    """
    obs = data.select(*template._obs_keys)
    actor = params.get("actor_network_params").detach()
    weight_params = params.get(template._tilted_weight_params_name).detach()

    def policy(actor, obs):
        dist = template._policy_dist(obs, actor)
        return dist.loc, dist.scale

    loc, scale = torch.vmap(policy)(actor, obs)
    batch_dims = data.batch_dims - 1  # after the agent dimension

    def log_weight(actions: Tensor) -> Tensor:
        # actions [*chains, N, *B, d]: vmap over the agent dimension
        agent_dim = actions.ndim - batch_dims - 2
        out = torch.vmap(template._tilted_log_weight, (0, agent_dim, 0))(
            obs, actions, weight_params
        )
        return out.movedim(0, agent_dim)

    samples, info = run_sampler(template.compile_sampler)(
        log_weight,
        loc,
        scale,
        data.get(template.tensor_keys.action),
        num_group_dims=1,
        **template._sampler_options(template._validating()),
    )
    return samples.movedim(1, 0), info


def _swap_in(module: LossModule, params: TensorDictBase) -> Callable[[], None]:
    """Puts ``params`` into ``module``; returns the function that restores the old ones.

    A loss keeps its networks' parameters in :class:`~tensordict.nn.TensorDictParams`
    children; their content is swapped directly. ``to_module`` would build a
    new ``TensorDictParams`` for the swap (an ``nn.Module.__init__``, on which
    ``torch.compile`` breaks the graph, and a graph break inside vmap sends
    the whole vmapped call back to eager).
    """
    swapped, rest = [], []
    for key in params.keys():
        child = module._modules.get(key)
        if isinstance(child, TensorDictParams):
            swapped.append((child, child._param_td))
            child._param_td = params.get(key)
        else:
            rest.append(key)
    old = params.select(*rest).to_module(module) if rest else None

    def restore() -> None:
        for child, td in swapped:
            child._param_td = td
        if old is not None:
            old.to_module(module)

    return restore


def _check_losses(losses: list) -> None:
    if not losses:
        raise ValueError("AgentGroup needs at least one loss module.")
    kinds = {type(loss) for loss in losses}
    if len(kinds) > 1 or not isinstance(losses[0], LossModule):
        raise ValueError(
            "AgentGroup: every agent must be a LossModule of the same type, got "
            f"{sorted(k.__name__ for k in kinds)}."
        )
    if len({id(loss) for loss in losses}) < len(losses):
        raise ValueError(
            "AgentGroup: the same loss module was passed twice; build one per agent."
        )


def _per_agent_options(losses: list) -> dict[str, Tensor]:
    """Plain-number attributes that differ between the losses, as ``[N]`` tensors."""
    first = vars(losses[0])
    options = {}
    for name, value in first.items():
        if not isinstance(value, _PLAIN) or name.startswith("__"):
            continue
        values = [vars(loss).get(name) for loss in losses]
        if all(v == value for v in values[1:]):
            continue
        numeric = all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
        )
        if not numeric or any(isinstance(v, int) for v in values):
            raise ValueError(
                f"AgentGroup: option {name!r} differs between agents ({values}); only "
                "real-valued (float) options may differ, sizes, flags and names must be "
                "equal."
            )
        options[name] = torch.tensor(
            values, dtype=torch.get_default_dtype(), device=_device(losses[0])
        )
    return options


def _device(loss: LossModule) -> torch.device:
    for tensor in loss.parameters():
        return tensor.device
    return torch.device("cpu")
