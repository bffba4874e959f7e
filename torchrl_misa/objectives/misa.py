"""The MISA loss: mutual-information regularised offline actor-critic.

Paper: "Mutual Information Regularized Offline Reinforcement Learning"
(Ma et al., NeurIPS 2023), Eq. 8-17. The equations this file implements are
written out in ``docs/loss.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    dispatch,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torch.func import functional_call

from torchrl.data.tensor_specs import Composite
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions import TanhNormal
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    _cache_values,
    _vmap_func,
    dispatch_value_estimator,
    ValueEstimators,
)
from torchrl.objectives.value import ValueEstimatorBase

from torchrl_misa import mcmc as _mcmc

try:
    from torch.compiler import is_compiling
except ImportError:  # pragma: no cover - older torch
    from torch._dynamo import is_compiling

MI_ESTIMATORS = ("misa", "dv", "f", "ba")
SAMPLER_MODES = ("whitened", "pretanh", "authors")


class MISALoss(LossModule):
    r"""Mutual Information Regularized offline actor-critic loss (MISA).

    Implements the policy-evaluation (Eq. 12) and policy-improvement (Eq. 13
    with the unbiased gradient of Eq. 15) objectives of "Mutual Information
    Regularized Offline Reinforcement Learning" (Ma et al., 2023), with the
    constants of the authors' code. For a batch of transitions
    :math:`(s, a, r, s', d)`, :math:`k` policy samples :math:`a_j \sim \pi(\cdot|s)`
    and :math:`Q_{\min} = \min_i Q_i`:

    * critic ``i``: ``(Q_i(s,a) - y)^2 + min_q_weight * gap_i(s)``, with
      ``y = r + gamma * (1 - terminated) * min_i Qtarget_i(s', a' ~ pi(.|s'))``
      (plain squared error, no entropy in the backup unless
      ``backup_entropy=True``) and, for the default estimator,
      ``gap_i(s) = logsumexp_j Q_i(s, a_j) - log k - Q_i(s, a)``.
      The log-mean-exp subtracts ``log k`` (the number of samples averaged);
      the authors' code subtracts the log of the batch size instead, a
      constant shift that only matters with the Lagrange budget.
      ``loss_qvalue`` is the sum of the critics' losses.
    * actor: ``bc_weight * (alpha * log pi(a~|s) - log pi(a|s)) - Qmin(s, a~)
      + unbiased_weight * mean_j log pi(a_mc_j|s)``, ``a~`` reparameterised,
      ``a_mc`` drawn by Hamiltonian Monte Carlo from
      ``p(a|s) ∝ pi(a|s) exp Qmin(s, a)`` with the current (not target)
      critics, frozen while sampling; only ``log pi(a_mc|s)`` carries
      gradients, to the actor.
    * alpha: ``-log_alpha * (log pi(a~|s) + target_entropy)``.
    * Lagrange form (``lagrange_tau`` set): the critic regulariser becomes
      ``alpha' * min_q_weight * (gap_i - tau)`` with
      ``alpha' = clamp(exp(log_alpha'), 0, 1e6)`` and
      ``loss_alpha_prime = -mean_i alpha' * min_q_weight * (gap_i - tau)``.

    Each loss moves only its own parameters: the actor loss reads the critics
    through detached parameters, the critic loss reads policy samples as
    data, ``loss_alpha`` moves ``log_alpha`` only and ``loss_alpha_prime``
    ``log_alpha_prime`` only. With ``reduction="none"`` every loss is the
    per-transition term (shape of the batch) whose mean is the loss above.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the policy, a
            :class:`~torchrl.modules.ProbabilisticActor` with a
            :class:`~torchrl.modules.TanhNormal` distribution on ``[-1, 1]``.
        qvalue_network (TensorDictModule): ``Q(s, a)``, writing
            ``"state_action_value"`` of shape ``[*batch, 1]``. It is copied
            into an ensemble of ``num_qvalue_nets`` critics with independent
            parameters, plus their Polyak targets (update them with
            :class:`~torchrl.objectives.SoftUpdate`).

    Keyword Args:
        mi_critic (TensorDictModule, optional): MISA-T. A separate network
            ``T(s, a)`` (same input/output keys as the critic) estimates the
            mutual-information bound; it is trained by ``loss_mi_critic``
            (minus the bound), the actor's correction uses ``T`` instead of
            ``Qmin`` and the critics keep only their TD loss.
        num_qvalue_nets (int): critics in the ensemble. Default 2.
        min_q_weight (float): :math:`\gamma_1`, weight of the critic
            regulariser. Default 5.0.
        bc_weight (float): weight of the actor's BC / entropy term. Default 0.5.
        unbiased_weight (float): weight of the MCMC correction. Default 0.1.
        mi_estimator (str): which bound regularises the critics and which
            correction the actor gets: ``"misa"`` (Eq. 10, per-state
            log-mean-exp, default), ``"dv"`` (Eq. 9, one log-mean-exp over all
            ``(s, a~pi)`` pairs), ``"f"`` (Eq. 8, mean of ``exp(Q - 1)``) or
            ``"ba"`` (Barber-Agakov: no critic regulariser, BC log-likelihood
            only, no correction). Only ``"misa"`` is invariant to a shift of
            Q in each state: ``"dv"`` weights states by ``exp Q`` across the
            batch (a few high-value states take all the weight when values
            differ by tens between states), and ``"f"`` depends on Q's level
            (for Q far below 0 its regulariser reduces to ``-Q(s, a)``; above
            ~85 ``exp`` overflows float32, which raises a ``ValueError``).
        bc_term (bool): keep ``-log pi(a|s)`` in the actor loss. ``False`` is
            the paper's "no-BA" ablation. Default ``True``.
        unbiased_correction (bool, optional): add the MCMC correction term.
            ``False`` is "MISA-biased". Defaults to ``True`` except with
            ``mi_estimator="ba"``.
        num_mcmc_samples (int): ``k``, MCMC samples kept per state. Default 50.
        num_policy_samples (int, optional): policy samples per state for the
            critic's log-mean-exp. Defaults to ``num_mcmc_samples`` (the
            authors use one ``k`` for both).
        num_burnin (int): burn-in transitions. Default 5.
        num_leapfrog (int): leapfrog steps per transition. Default 2.
        step_size (float): initial step size. Default 1.0.
        num_adaptation_steps (int, optional): step-size adaptation steps,
            the sampler's default (80% of the burn-in) when ``None``.
        target_accept (float): adaptation target. Default 0.75.
        sampler_mode (str): ``"whitened"`` (default), ``"pretanh"`` or
            ``"authors"``, see :func:`torchrl_misa.mcmc.sample_tilted_tanh_normal`.
        num_chains (int): chains per state. Default 1.
        compile_sampler (bool): compile the sampler's transition with
            :func:`torch.compile` (about twice as fast on CPU, after a warm-up
            of seconds). The sampler is never traced by an outer
            ``torch.compile(loss)``: dynamo would unroll its loop over
            transitions. Default ``False``.
        lagrange_tau (float, optional): Lagrange budget ``tau`` (Eq. 17);
            ``None`` (default) uses the fixed ``min_q_weight``.
        alpha_init (float): initial entropy temperature. Default 1.0
            (``log_alpha = 0``).
        fixed_alpha (bool): keep alpha at ``alpha_init``. Default ``False``.
        target_entropy (float or "auto"): ``"auto"`` is ``-dim(A)``.
        action_spec (TensorSpec, optional): action spec, read from the actor
            when not given.
        backup_entropy (bool): subtract ``alpha * log pi(a'|s')`` in the
            backup. Default ``False`` (as the authors).
        validate_inputs (bool): check keys, shapes, finiteness and action
            bounds of every batch (one host sync). Default ``True``; skipped
            under :func:`torch.compile` and CUDA-graph capture.
        reduction (str): ``"none"`` | ``"mean"`` | ``"sum"``. Default ``"mean"``.
        deactivate_vmap (bool): loop over the critics instead of
            :func:`torch.vmap`. Default ``False``.

    Input keys (default names, change them with :meth:`set_keys`):
    ``"action"`` ``[*B, d]`` in ``[-1, 1]``, the actor's and critic's
    observation keys and their ``("next", ...)`` versions, ``("next",
    "reward")``, ``("next", "done")``, ``("next", "terminated")`` ``[*B, 1]``.

    Output: a TensorDict (empty batch size) with ``loss_actor``,
    ``loss_qvalue``, ``loss_alpha`` (``loss_alpha_prime`` with the Lagrange
    budget, ``loss_mi_critic`` with ``mi_critic``) and detached diagnostics
    ``alpha``, ``entropy``, ``mi_bound`` (the bound's estimate, up to the
    constant data-action entropy ``H(A)``), ``q_gap`` (the critic
    regulariser, averaged over critics and states; the per-state
    log-mean-exp gap for ``"ba"`` and MISA-T), ``hmc_acceptance_rate``,
    ``hmc_step_size``, ``hmc_num_divergent`` (when the sampler runs) and
    ``alpha_prime``. The transitions' squared TD errors (max over critics)
    are written to the input under ``"td_error"``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
        >>> from torchrl.modules import TanhNormal, ValueOperator
        >>> from torchrl_misa import MISALoss
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, batch = 3, 2, [4]
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         nn.Sequential(MLP(n_obs, 2 * n_act, num_cells=[8]), NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"],
        ...     spec=Bounded(-1.0, 1.0, (n_act,)),
        ...     distribution_class=TanhNormal)
        >>> qvalue = ValueOperator(MLP(n_obs + n_act, 1, num_cells=[8]),
        ...     in_keys=["observation", "action"])
        >>> loss = MISALoss(actor, qvalue, num_mcmc_samples=4, num_burnin=2)
        >>> data = TensorDict({
        ...     "observation": torch.randn(*batch, n_obs),
        ...     "action": torch.rand(*batch, n_act) * 2 - 1,
        ...     ("next", "observation"): torch.randn(*batch, n_obs),
        ...     ("next", "reward"): torch.randn(*batch, 1),
        ...     ("next", "done"): torch.zeros(*batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(*batch, 1, dtype=torch.bool),
        ... }, batch)
        >>> out = loss(data)
        >>> sorted(out.keys())  # doctest: +NORMALIZE_WHITESPACE
        ['alpha', 'entropy', 'hmc_acceptance_rate', 'hmc_num_divergent',
         'hmc_step_size', 'loss_actor', 'loss_alpha', 'loss_qvalue', 'mi_bound',
         'q_gap']
        >>> total = out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]
        >>> total.backward()

    Like TorchRL's losses, it also takes keyword tensors and returns the
    ``out_keys`` in order:

        >>> loss_actor, loss_qvalue, *_ = loss(
        ...     observation=data["observation"], action=data["action"],
        ...     next_observation=data["next", "observation"],
        ...     next_reward=data["next", "reward"], next_done=data["next", "done"],
        ...     next_terminated=data["next", "terminated"])
        >>> loss_actor.shape
        torch.Size([])
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (change them with :meth:`set_keys`).

        Attributes:
            action (NestedKey): dataset action ``[*B, d]``. Defaults to ``"action"``.
            value (NestedKey): key the value estimator reads the next-state
                value from. Defaults to ``"state_value"``.
            state_action_value (NestedKey): output of the critics (and of the
                MI critic). Defaults to ``"state_action_value"``.
            priority (NestedKey): where the TD error is written.
                Defaults to ``"td_error"``.
            reward (NestedKey): reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): termination flag, under ``"next"``.
                Defaults to ``"terminated"``.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    mi_critic_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    mi_critic_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    target_mi_critic_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        mi_critic: TensorDictModule | None = None,
        num_qvalue_nets: int = 2,
        min_q_weight: float = 5.0,
        bc_weight: float = 0.5,
        unbiased_weight: float = 0.1,
        mi_estimator: str = "misa",
        bc_term: bool = True,
        unbiased_correction: bool | None = None,
        num_mcmc_samples: int = 50,
        num_policy_samples: int | None = None,
        num_burnin: int = 5,
        num_leapfrog: int = 2,
        step_size: float = 1.0,
        num_adaptation_steps: int | None = None,
        target_accept: float = 0.75,
        sampler_mode: str = "whitened",
        num_chains: int = 1,
        compile_sampler: bool = False,
        lagrange_tau: float | None = None,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: float | str = "auto",
        action_spec=None,
        backup_entropy: bool = False,
        validate_inputs: bool = True,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
    ) -> None:
        self._out_keys = None
        if reduction is None:
            reduction = "mean"
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(
                f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}."
            )
        _check_options(
            mi_estimator=mi_estimator,
            bc_term=bc_term,
            unbiased_correction=unbiased_correction,
            mi_critic=mi_critic,
            lagrange_tau=lagrange_tau,
            sampler_mode=sampler_mode,
            num_qvalue_nets=num_qvalue_nets,
            num_mcmc_samples=num_mcmc_samples,
            num_policy_samples=num_policy_samples,
            num_chains=num_chains,
            num_burnin=num_burnin,
            num_leapfrog=num_leapfrog,
        )
        _check_actor(actor_network)
        super().__init__()

        self.convert_to_functional(actor_network, "actor_network")
        self.num_qvalue_nets = num_qvalue_nets
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=True,
            compare_against=list(actor_network.parameters()),
        )
        self.use_mi_critic = mi_critic is not None
        if self.use_mi_critic:
            self.convert_to_functional(mi_critic, "mi_critic_network")

        device = next(self.parameters()).device
        self.fixed_alpha = fixed_alpha
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", torch.nn.Parameter(log_alpha))
        self.lagrange_tau = lagrange_tau
        if lagrange_tau is not None:
            self.register_parameter(
                "log_alpha_prime",
                torch.nn.Parameter(torch.tensor(1.0, device=device)),
            )

        self._action_dim = _action_dim(action_spec, actor_network)
        if target_entropy == "auto":
            target_entropy = (
                -float(self._action_dim) if self._action_dim is not None else math.nan
            )
        elif isinstance(target_entropy, str):
            raise ValueError(
                f"target_entropy must be a float or 'auto', got {target_entropy!r}."
            )
        self._target_entropy_auto = math.isnan(target_entropy)
        self.register_buffer(
            "target_entropy", torch.tensor(float(target_entropy), device=device)
        )

        self.min_q_weight = float(min_q_weight)
        self.bc_weight = float(bc_weight)
        self.unbiased_weight = float(unbiased_weight)
        self.mi_estimator = mi_estimator
        self.bc_term = bool(bc_term)
        if unbiased_correction is None:
            unbiased_correction = mi_estimator != "ba"
        self.unbiased_correction = bool(unbiased_correction)
        self.num_mcmc_samples = int(num_mcmc_samples)
        self.num_policy_samples = int(
            num_mcmc_samples if num_policy_samples is None else num_policy_samples
        )
        self.num_burnin = int(num_burnin)
        self.num_leapfrog = int(num_leapfrog)
        self.step_size = float(step_size)
        self.num_adaptation_steps = num_adaptation_steps
        self.target_accept = float(target_accept)
        self.sampler_mode = sampler_mode
        self.num_chains = int(num_chains)
        self.compile_sampler = bool(compile_sampler)
        self.backup_entropy = bool(backup_entropy)
        self.validate_inputs = bool(validate_inputs)
        self.deactivate_vmap = deactivate_vmap
        self.reduction = reduction
        self._make_vmap()
        # Built now (not lazily) so that state_dicts match before and after use.
        self.make_value_estimator()

    # ------------------------------------------------------------------ setup
    def _make_vmap(self) -> None:
        self._vmap_qvalue_networkN0 = _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    @property
    def regularise_critics(self) -> bool:
        """Whether the critics get the MI regulariser (not for BA nor MISA-T)."""
        return self.mi_estimator != "ba" and not self.use_mi_critic

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._out_keys = None

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams
    ) -> None:
        """Builds the value estimator of the backup (TD(0), gamma 0.99 by default)."""
        if value_type is None:
            value_type = self.default_value_estimator
        if isinstance(value_type, ValueEstimatorBase) or (
            isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
        ):
            return LossModule.make_value_estimator(self, value_type, **hyperparams)
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value_target": "value_target",
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hyperparams,
        )

    @property
    def _obs_keys(self) -> list[NestedKey]:
        """Observation keys read by the actor, the critics and the MI critic."""
        action = unravel_key(self.tensor_keys.action)
        keys = [unravel_key(k) for k in self.actor_network.in_keys]
        nets = [self.qvalue_network]
        if self.use_mi_critic:
            nets.append(self.mi_critic_network)
        for net in nets:
            for key in net.in_keys:
                key = unravel_key(key)
                if key != action and key not in keys:
                    keys.append(key)
        return keys

    @property
    def in_keys(self) -> list[NestedKey]:
        obs = self._obs_keys
        return [
            self.tensor_keys.action,
            *obs,
            *[_next(k) for k in obs],
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
        ]

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = ["loss_actor", "loss_qvalue", "loss_alpha"]
            if self.lagrange_tau is not None:
                keys.append("loss_alpha_prime")
            if self.use_mi_critic:
                keys.append("loss_mi_critic")
            keys += ["alpha", "entropy", "mi_bound", "q_gap"]
            if self.unbiased_correction:
                keys += ["hmc_acceptance_rate", "hmc_step_size", "hmc_num_divergent"]
            if self.lagrange_tau is not None:
                keys.append("alpha_prime")
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @property
    def _alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    @property
    @_cache_values
    def _cached_detach_qvalue_params(self) -> TensorDictBase:
        return self.qvalue_network_params.detach()

    # --------------------------------------------------------------- forward
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the MISA losses for a batch of transitions (see class doc)."""
        if self.validate_inputs and not _capturing():
            self._validate(tensordict)
        if self._target_entropy_auto:
            self.target_entropy.fill_(
                -float(tensordict.get(self.tensor_keys.action).shape[-1])
            )
            self._target_entropy_auto = False
        keys = self.tensor_keys
        action = tensordict.get(keys.action)
        obs = tensordict.select(*self._obs_keys)
        next_obs = tensordict.get("next").select(*self._obs_keys)
        k = self.num_policy_samples

        # One actor forward on s: its distribution gives the reparameterised
        # sample, the log-likelihoods and the sampler's loc/scale.
        dist = self._policy_dist(obs, self.actor_network_params)
        a_new, logp_new = dist.rsample_and_log_prob()
        logp_data = dist.log_prob(action)
        with torch.no_grad():
            a_pi = dist.sample((k,))
        alpha = self._alpha

        # Critics on [a_data, a_pi_1..k] in one call.
        reg_params = self.qvalue_network_params
        if self.regularise_critics:
            q_all = self._q_values(
                obs, torch.cat([action.unsqueeze(0), a_pi]), reg_params
            )
            q_data, q_pi = q_all[:, 0], q_all[:, 1:]
        else:
            q_data = self._q_values(obs, action, reg_params)
            with torch.no_grad():
                q_pi = self._q_values(obs, a_pi, reg_params)

        target = self._td_target(tensordict, next_obs, alpha)
        td_sq = (q_data - target).pow(2)
        tensordict.set(keys.priority, td_sq.detach().max(0).values)

        out = {}
        critic = td_sq
        gaps = self._critic_gap(q_pi, q_data)
        if self.mi_estimator == "f" and self.validate_inputs and not _capturing():
            self._check_f_bound(gaps, q_pi)
        if self.regularise_critics:
            if self.lagrange_tau is not None:
                alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
                slack = self.min_q_weight * (gaps - self.lagrange_tau)
                critic = critic + alpha_prime.detach() * slack
                out["loss_alpha_prime"] = -(alpha_prime * slack.detach()).mean(0)
                out_alpha_prime = alpha_prime.detach()
            else:
                critic = critic + self.min_q_weight * gaps
        loss_qvalue = critic.sum(0)

        # The energy T(s, a) of the bound: Qmin, or the MI critic for MISA-T.
        if self.use_mi_critic:
            t_all = self._mi_values(
                obs,
                torch.cat([action.unsqueeze(0), a_pi]),
                self.mi_critic_network_params,
            )
            t_data, t_pi = t_all[0], t_all[1:]
            bound = logp_data.detach() + t_data - self._log_normaliser(t_pi)
            out["loss_mi_critic"] = -bound
            e_data, e_pi = t_data.detach(), t_pi.detach()
        else:
            e_data, e_pi = q_data.detach().min(0).values, q_pi.detach().min(0).values
        log_norm = self._log_normaliser(e_pi) if self.mi_estimator != "ba" else 0.0
        mi_bound = logp_data.detach() + (
            e_data - log_norm if self.mi_estimator != "ba" else 0.0
        )

        # Actor: critics read through detached parameters.
        q_new = (
            self._q_values(obs, a_new, self._cached_detach_qvalue_params).min(0).values
        )
        bc = alpha * logp_new
        if self.bc_term:
            bc = bc - logp_data
        actor = self.bc_weight * bc - q_new
        if self.unbiased_correction:
            a_mc, info = self._sample_tilted(obs, dist, action)
            logp_mc = dist.log_prob(a_mc)
            weight = self._correction_weight(e_pi)
            actor = actor + self.unbiased_weight * weight * logp_mc.mean(0)
        loss_alpha = -self.log_alpha * (logp_new.detach() + self.target_entropy)

        red = self._reduce
        losses = {
            "loss_actor": red(actor, tensordict),
            "loss_qvalue": red(loss_qvalue, tensordict),
            "loss_alpha": red(loss_alpha, tensordict),
        }
        for name in ("loss_alpha_prime", "loss_mi_critic"):
            if name in out:
                losses[name] = red(out[name], tensordict)
        losses["alpha"] = alpha
        losses["entropy"] = -logp_new.detach().mean()
        losses["mi_bound"] = mi_bound.mean()
        losses["q_gap"] = gaps.detach().mean()
        if self.unbiased_correction:
            losses["hmc_acceptance_rate"] = info.get("acceptance_rate").float().mean()
            losses["hmc_step_size"] = info.get("step_size").float().mean()
            losses["hmc_num_divergent"] = info.get("num_divergent").float().mean()
        if self.lagrange_tau is not None and self.regularise_critics:
            losses["alpha_prime"] = out_alpha_prime
        return TensorDict(losses, batch_size=[])

    # ---------------------------------------------------------------- pieces
    def _reduce(self, loss: Tensor, tensordict: TensorDictBase) -> Tensor:
        return self._reduce_loss(loss, tensordict=tensordict)

    def _policy_dist(self, obs: TensorDictBase, params: TensorDictBase) -> TanhNormal:
        with set_exploration_type(ExplorationType.RANDOM), params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            return self.actor_network.get_dist(obs.copy())

    def _q_values(
        self, obs: TensorDictBase, actions: Tensor, params: TensorDictBase
    ) -> Tensor:
        """``Q_i(s, a)`` for every critic: ``[n_q, *actions.shape[:-1]]``.

        ``actions`` may carry leading sample dimensions before the batch ones.
        """
        td = obs.expand(actions.shape[:-1]).set(self.tensor_keys.action, actions)
        out = self._vmap_qvalue_networkN0(td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _mi_values(
        self, obs: TensorDictBase, actions: Tensor, params: TensorDictBase
    ) -> Tensor:
        """``T(s, a)`` of the MI critic: ``[*actions.shape[:-1]]``."""
        td = obs.expand(actions.shape[:-1]).set(self.tensor_keys.action, actions)
        with params.to_module(self.mi_critic_network, preserve_module_state=False):
            out = self.mi_critic_network(td)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _td_target(
        self, tensordict: TensorDictBase, next_obs: TensorDictBase, alpha: Tensor
    ) -> Tensor:
        """``y = r + gamma (1 - terminated) min_i Qtarget_i(s', a')``: ``[*B]``."""
        keys = self.tensor_keys
        with torch.no_grad():
            next_dist = self._policy_dist(next_obs, self.actor_network_params.data)
            a_next, logp_next = next_dist.sample_and_log_prob()
            v_next = (
                self._q_values(next_obs, a_next, self.target_qvalue_network_params)
                .min(0)
                .values
            )
            if self.backup_entropy:
                v_next = v_next - alpha * logp_next
            value_td = tensordict.select(
                ("next", keys.reward), ("next", keys.done), ("next", keys.terminated)
            )
            target = self.value_estimator.value_estimate(
                value_td, next_value=v_next.unsqueeze(-1)
            )
        return target.squeeze(-1)

    def _critic_gap(self, q_pi: Tensor, q_data: Tensor) -> Tensor:
        """Per-state critic regulariser ``[n_q, *B]`` (its mean is ``gap_i``).

        ``q_pi``: ``[n_q, k, *B]`` at policy samples, ``q_data``: ``[n_q, *B]``.
        """
        if self.mi_estimator == "dv":
            flat = q_pi.flatten(1)
            lme = flat.logsumexp(1) - math.log(flat.shape[1])
            return lme.view(-1, *([1] * (q_data.ndim - 1))) - q_data
        if self.mi_estimator == "f":
            return (q_pi - 1.0).exp().mean(1) - q_data
        # "misa", and the diagnostic gap of "ba" / MISA-T
        return q_pi.logsumexp(1) - math.log(q_pi.shape[1]) - q_data

    def _log_normaliser(self, e_pi: Tensor) -> Tensor:
        """The bound's normalising term for energies ``e_pi`` ``[k, *B]``.

        Returns ``[*B]``: ``log mean_j exp e_j(s)`` (MISA), the log-mean-exp
        over all pairs broadcast (DV), ``mean_j exp(e_j(s) - 1)`` (f).
        """
        if self.mi_estimator == "dv":
            return (
                e_pi.logsumexp(tuple(range(e_pi.ndim))) - math.log(e_pi.numel())
            ).expand(e_pi.shape[1:])
        if self.mi_estimator == "f":
            return (e_pi - 1.0).exp().mean(0)
        return e_pi.logsumexp(0) - math.log(e_pi.shape[0])

    @staticmethod
    def _check_f_bound(gaps: Tensor, q_pi: Tensor) -> None:
        # exp(Q - 1) is not shift-invariant: it overflows float32 once Q > ~85,
        # which D4RL locomotion values reach; the loss would turn inf, then NaN.
        limit = math.log(torch.finfo(q_pi.dtype).max) + 1.0 - math.log(q_pi.shape[1])
        if not torch.isfinite(gaps).all() and q_pi.max() > limit:
            raise ValueError(
                "MISALoss(mi_estimator='f'): exp(Q - 1) overflowed (largest policy "
                f"action value {q_pi.max().item():.1f}, above {limit:.1f} in "
                f"{q_pi.dtype}). "
                "The f-bound depends on the scale of Q: scale the rewards down so "
                "that values stay below ~80, or use mi_estimator='misa' or 'dv', "
                "whose log-mean-exp is shift-invariant."
            )

    def _correction_weight(self, e_pi: Tensor) -> Tensor | float:
        """Per-state weight of the MCMC correction, from the bound's gradient.

        With ``Z(s) = E_pi exp T(s, a)`` estimated by the policy samples:
        1 (MISA), ``Z(s) / mean_s Z(s)`` (DV), ``Z(s) / e`` (f).
        """
        if self.mi_estimator == "misa":
            return 1.0
        log_z = e_pi.logsumexp(0) - math.log(e_pi.shape[0])
        if self.mi_estimator == "dv":
            return (
                log_z
                - (log_z.logsumexp(tuple(range(log_z.ndim))) - math.log(log_z.numel()))
            ).exp()
        return (log_z - 1.0).exp()

    def _sample_tilted(
        self, obs: TensorDictBase, dist: TanhNormal, action: Tensor
    ) -> tuple[Tensor, TensorDictBase]:
        """HMC samples of ``p(a|s) ∝ pi(a|s) exp T(s, a)``: ``[k, *B, d]`` and info."""
        if self.use_mi_critic:
            log_weight_fn = _energy_fn(
                self.mi_critic_network,
                self.mi_critic_network_params.detach(),
                obs,
                self.tensor_keys,
                ensemble=False,
            )
        else:
            log_weight_fn = _energy_fn(
                self.qvalue_network,
                self._cached_detach_qvalue_params,
                obs,
                self.tensor_keys,
                ensemble=True,
                vmap_fn=self._vmap_qvalue_networkN0,
            )
        return _run_sampler(
            log_weight_fn,
            dist.loc.detach(),
            dist.scale.detach(),
            action,
            num_samples=self.num_mcmc_samples,
            num_burnin=self.num_burnin,
            num_leapfrog=self.num_leapfrog,
            step_size=self.step_size,
            num_adaptation_steps=self.num_adaptation_steps,
            target_accept=self.target_accept,
            num_chains=self.num_chains,
            compile=self.compile_sampler,
            mode=self.sampler_mode,
        )

    # ------------------------------------------------------------ validation
    def _validate(self, tensordict: TensorDictBase) -> None:
        keys = self.tensor_keys
        present = set(tensordict.keys(True, True))
        missing = [k for k in self.in_keys if unravel_key(k) not in present]
        if missing:
            raise ValueError(
                f"MISALoss: the input is missing the entries {missing}. "
                "Provide them, or rename the expected keys with "
                "loss.set_keys(action=..., reward=..., done=..., terminated=...)."
            )
        value_key = unravel_key(keys.state_action_value)
        nets = [("qvalue_network", self.qvalue_network)]
        if self.use_mi_critic:
            nets.append(("mi_critic", self.mi_critic_network))
        for name, net in nets:
            if value_key not in [unravel_key(k) for k in net.out_keys]:
                raise ValueError(
                    f"MISALoss: {name} writes {net.out_keys} but the loss reads "
                    f"{keys.state_action_value!r}; call loss.set_keys(state_action_value=...) "
                    "or change the network's out_keys."
                )
        batch = tensordict.batch_size
        if len(batch) == 0:
            raise ValueError(
                "MISALoss: the input tensordict has an empty batch size; give it "
                "the batch dimensions of the transitions, e.g. TensorDict(..., batch_size=[B])."
            )
        action = tensordict.get(keys.action)
        d = self._action_dim
        if (
            action.shape[:-1] != batch
            or action.ndim != len(batch) + 1
            or (d is not None and action.shape[-1] != d)
        ):
            expected = (
                f"[{', '.join(str(b) for b in batch)}, {d if d is not None else 'd'}]"
            )
            raise ValueError(
                f"MISALoss: action has shape {list(action.shape)}, expected {expected} "
                "(batch dimensions, then the action dimension)."
            )
        for name in (keys.reward, keys.done, keys.terminated):
            value = tensordict.get(("next", name))
            if value.shape != (*batch, 1):
                raise ValueError(
                    f"MISALoss: ('next', {name!r}) has shape {list(value.shape)}, "
                    f"expected {[*batch, 1]} (one value per transition, trailing 1)."
                )
        reward = tensordict.get(("next", keys.reward))
        bad = [
            ~torch.isfinite(reward).all(),
            ~torch.isfinite(action).all(),
            (action.abs() > 1.0).any(),
        ]
        obs_values = [tensordict.get(k) for k in self._obs_keys]
        obs_values += [tensordict.get(_next(k)) for k in self._obs_keys]
        bad.append(torch.stack([~torch.isfinite(v).all() for v in obs_values]).any())
        flags = torch.stack(bad).tolist()  # one host sync for all checks
        if flags[0]:
            raise ValueError(
                "MISALoss: ('next', reward) holds NaN or infinite values; clean or "
                "drop those transitions before training."
            )
        if flags[1]:
            raise ValueError("MISALoss: the action holds NaN or infinite values.")
        if flags[2]:
            raise ValueError(
                f"MISALoss: actions must lie in [-1, 1] (tanh-squashed policy); got "
                f"values in [{action.min().item():.4g}, {action.max().item():.4g}]. "
                "Rescale the dataset's actions to [-1, 1] (and clip to +-0.999)."
            )
        if flags[3]:
            raise ValueError(
                "MISALoss: an observation entry holds NaN or infinite values."
            )


# ----------------------------------------------------------------- helpers
@torch.compiler.disable
def _run_sampler(*args, **kwargs) -> tuple[Tensor, TensorDictBase]:
    # Kept out of an outer torch.compile: dynamo would unroll the chain's Python
    # loop (~55 transitions) into one huge graph. The sampler compiles a single
    # transition itself instead (``compile_sampler=True``).
    return _mcmc.sample_tilted_tanh_normal(*args, **kwargs)


def _next(key: NestedKey) -> tuple:
    key = unravel_key(key)
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


def _capturing() -> bool:
    if is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _energy_fn(
    network: TensorDictModule,
    params: TensorDictBase,
    obs: TensorDictBase,
    keys,
    *,
    ensemble: bool,
    vmap_fn: Callable | None = None,
) -> Callable[[Tensor], Tensor]:
    """Builds ``a -> T(s, a)`` (``min_i Q_i(s, a)`` for an ensemble).

    ``a`` is ``[*lead, *B, d]`` (``lead`` = the sampler's chain dimensions);
    the observations ``[*B, ...]`` are expanded to it. ``params`` are
    detached: gradients flow to ``a`` only. This closure is the sampler's hot
    path (about a hundred gradient evaluations per update), so a plain
    :class:`TensorDictModule` is called through its inner module on tensors,
    skipping the per-call tensordict bookkeeping.
    """
    batch_ndim = obs.batch_dims
    action_key = unravel_key(keys.action)
    in_keys = [unravel_key(k) for k in network.in_keys]
    fast = (
        type(network).forward is TensorDictModule.forward
        and len(network.out_keys) == 1
        and unravel_key(network.out_keys[0]) == unravel_key(keys.state_action_value)
        and action_key in in_keys
        and all(
            isinstance(k, tuple) and k[0] == "module" for k in params.keys(True, True)
        )
    )
    if fast:
        inner = network.module
        flat = {".".join(k[1:]): v for k, v in params.items(True, True)}
        members = (
            [{n: v[i] for n, v in flat.items()} for i in range(params.shape[0])]
            if ensemble
            else [flat]
        )
        inputs = [None if k == action_key else obs.get(k) for k in in_keys]

        def energy(a: Tensor) -> Tensor:
            lead = a.shape[: a.ndim - batch_ndim - 1]
            args = [a if x is None else x.expand(*lead, *x.shape) for x in inputs]
            out = functional_call(inner, members[0], tuple(args))
            for member in members[1:]:
                out = torch.minimum(out, functional_call(inner, member, tuple(args)))
            return out.squeeze(-1)

        return energy

    def energy_td(a: Tensor) -> Tensor:
        td = obs.expand(a.shape[:-1]).set(action_key, a)
        if ensemble:
            out = vmap_fn(td, params).get(keys.state_action_value).min(0).values
        else:
            with params.to_module(network, preserve_module_state=False):
                out = network(td).get(keys.state_action_value)
        return out.squeeze(-1)

    return energy_td


def _check_actor(actor_network) -> None:
    prob = None
    if isinstance(actor_network, ProbabilisticTensorDictSequential):
        prob = actor_network.module[-1]
    elif isinstance(actor_network, ProbabilisticTensorDictModule):
        prob = actor_network
    if not isinstance(prob, ProbabilisticTensorDictModule):
        raise ValueError(
            "MISALoss needs a stochastic actor (a ProbabilisticActor with a "
            f"TanhNormal distribution); got {type(actor_network).__name__}."
        )
    cls = prob.distribution_class
    if not (isinstance(cls, type) and issubclass(cls, TanhNormal)):
        name = getattr(cls, "__name__", repr(cls))
        raise ValueError(
            f"MISALoss needs a TanhNormal policy, got distribution_class={name}: the "
            "MCMC target pi(a|s) exp Q(s, a) is sampled in the tanh-squashed Gaussian's "
            "pre-tanh space. Build the actor with distribution_class=TanhNormal."
        )
    kwargs = prob.distribution_kwargs or {}
    low, high = kwargs.get("low", -1.0), kwargs.get("high", 1.0)
    if not (
        bool(torch.all(torch.as_tensor(low) == -1.0))
        and bool(torch.all(torch.as_tensor(high) == 1.0))
    ):
        raise ValueError(
            "MISALoss needs a TanhNormal on [-1, 1] (low=-1, high=1); got "
            f"low={low}, high={high}. Rescale the actions to [-1, 1] instead."
        )


def _action_dim(action_spec, actor_network) -> int | None:
    spec = (
        action_spec if action_spec is not None else getattr(actor_network, "spec", None)
    )
    if spec is None:
        return None
    if isinstance(spec, Composite):
        if "action" not in spec.keys(True, True):
            return None
        spec = spec["action"]
    if len(spec.shape) == 0:
        return None
    return int(spec.shape[-1])


def _check_options(
    *,
    mi_estimator,
    bc_term,
    unbiased_correction,
    mi_critic,
    lagrange_tau,
    sampler_mode,
    num_qvalue_nets,
    num_mcmc_samples,
    num_policy_samples,
    num_chains,
    num_burnin,
    num_leapfrog,
) -> None:
    if mi_estimator not in MI_ESTIMATORS:
        raise ValueError(
            f"mi_estimator must be one of {MI_ESTIMATORS}, got {mi_estimator!r}."
        )
    if sampler_mode not in SAMPLER_MODES:
        raise ValueError(
            f"sampler_mode must be one of {SAMPLER_MODES}, got {sampler_mode!r}."
        )
    if mi_estimator == "ba":
        if unbiased_correction:
            raise ValueError(
                "mi_estimator='ba' has no log-normaliser, hence no MCMC correction: "
                "leave unbiased_correction unset (or False)."
            )
        if not bc_term:
            raise ValueError(
                "mi_estimator='ba' with bc_term=False leaves no mutual-information "
                "term at all; use one of them."
            )
        if mi_critic is not None:
            raise ValueError(
                "mi_critic (MISA-T) needs mi_estimator 'misa', 'dv' or 'f'."
            )
    if lagrange_tau is not None and (mi_estimator == "ba" or mi_critic is not None):
        raise ValueError(
            "lagrange_tau tunes the critics' MI regulariser, which 'ba' and MISA-T "
            "(mi_critic) do not have; set lagrange_tau=None."
        )
    for name, value, low in (
        ("num_qvalue_nets", num_qvalue_nets, 1),
        ("num_mcmc_samples", num_mcmc_samples, 1),
        ("num_chains", num_chains, 1),
        ("num_burnin", num_burnin, 0),
        ("num_leapfrog", num_leapfrog, 1),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if num_mcmc_samples % num_chains:
        raise ValueError(
            f"num_mcmc_samples ({num_mcmc_samples}) counts the samples of all chains "
            f"together and must be divisible by num_chains ({num_chains})."
        )
    if num_policy_samples is not None and (
        int(num_policy_samples) != num_policy_samples or num_policy_samples < 1
    ):
        raise ValueError(
            f"num_policy_samples must be an integer >= 1, got {num_policy_samples!r}."
        )
