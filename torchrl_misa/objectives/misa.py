"""The MISA loss: mutual-information regularised offline actor-critic.

Paper: "Mutual Information Regularized Offline Reinforcement Learning"
(Ma et al., NeurIPS 2023, arXiv 2210.07484), Eq. 8-17; constants of the
authors' code, github.com/sail-sg/MISA.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch, ProbabilisticTensorDictSequential, TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor

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
from torchrl_misa.objectives._misa_bounds import (
    check_f_bound,
    correction_weight,
    critic_gap,
    log_normaliser,
)
from torchrl_misa.objectives._misa_checks import (
    action_dim,
    check_actor,
    check_batch,
    check_batch_values,
    check_options,
    check_value_hyperparams,
    check_weights,
    next_key,
)

try:
    from torch.compiler import is_compiling
except ImportError:  # pragma: no cover - older torch
    from torch._dynamo import is_compiling

_PARAMS = (
    "actor_network_params",
    "qvalue_network_params",
    "target_qvalue_network_params",
    "mi_critic_network_params",
)


@dataclass
class MISASharedTerms:
    """What MISA's losses share in one update; :meth:`MISALoss.forward` computes it once.

    Shapes: ``B`` the batch, ``d`` the action, ``k`` the policy samples,
    ``n_q`` the critics.
    """

    obs: TensorDictBase  #: the networks' observation entries, ``[*B]``
    action: Tensor  #: dataset action ``a``, ``[*B, d]``
    dist: TanhNormal  #: ``pi(.|s)``, from the one actor forward on ``s``
    action_new: Tensor  #: ``a~ ~ pi(.|s)``, reparameterised, ``[*B, d]``
    log_prob: Tensor  #: ``log pi(a~|s)``, ``[*B]``
    log_prob_data: Tensor  #: ``log pi(a|s)``, ``[*B]``
    action_pi: Tensor  #: ``k`` detached policy samples ``a_j``, ``[k, *B, d]``
    q_data: Tensor  #: ``Q_i(s, a)``, ``[n_q, *B]``
    q_pi: Tensor  #: ``Q_i(s, a_j)``, ``[n_q, k, *B]``
    gaps: Tensor  #: the critics' per-state MI regulariser, ``[n_q, *B]``
    t_data: Tensor | None  #: MISA-T's ``T(s, a)``, ``[*B]``
    t_pi: Tensor | None  #: MISA-T's ``T(s, a_j)``, ``[k, *B]``
    valid: Tensor | None  #: the loss mask of padded batches, ``[*B]``

    @property
    def energy_data(self) -> Tensor:
        """The bound's ``T(s, a)``, detached: ``Qmin`` or the MI critic."""
        if self.t_data is not None:
            return self.t_data.detach()
        return self.q_data.detach().min(0).values

    @property
    def energy_pi(self) -> Tensor:
        """The bound's ``T(s, a_j)`` ``[k, *B]``, detached."""
        if self.t_pi is not None:
            return self.t_pi.detach()
        return self.q_pi.detach().min(0).values


class MISALoss(LossModule):
    r"""Mutual Information Regularized offline actor-critic loss (MISA).

    Implements the policy-evaluation (Eq. 12) and policy-improvement (Eq. 13
    with the unbiased gradient of Eq. 15) objectives of "Mutual Information
    Regularized Offline Reinforcement Learning" (Ma et al., 2023,
    arXiv 2210.07484), with the constants of the authors' code
    (github.com/sail-sg/MISA). For a batch of transitions
    :math:`(s, a, r, s', d)`, :math:`k` policy samples :math:`a_j \sim \pi(\cdot|s)`
    and :math:`Q_{\min} = \min_i Q_i`:

    * :meth:`qvalue_loss`, critic ``i``: ``(Q_i(s,a) - y)^2 + min_q_weight * gap_i(s)``, with
      ``y = r + gamma * (1 - terminated) * min_i Qtarget_i(s', a' ~ pi(.|s'))``
      (plain squared error, no entropy in the backup unless
      ``backup_entropy=True``) and, for the default estimator,
      ``gap_i(s) = logsumexp_j Q_i(s, a_j) - log k - Q_i(s, a)``.
      The log-mean-exp subtracts ``log k`` (the number of samples averaged);
      the authors' code subtracts the log of the batch size instead, a
      constant shift that only matters with the Lagrange budget.
      ``loss_qvalue`` is the sum of the critics' losses.
    * :meth:`actor_loss`: ``bc_weight * (alpha * log pi(a~|s) - log pi(a|s)) - Qmin(s, a~)
      + unbiased_weight * mean_j log pi(a_mc_j|s)``, ``a~`` reparameterised,
      ``a_mc`` drawn by Hamiltonian Monte Carlo from
      ``p(a|s) ∝ pi(a|s) exp Qmin(s, a)`` with the current (not target)
      critics, frozen while sampling; only ``log pi(a_mc|s)`` carries
      gradients, to the actor.
    * :meth:`alpha_loss`: ``-log_alpha * (log pi(a~|s) + target_entropy)``.
    * Lagrange form (``lagrange_tau`` set): the critic regulariser becomes
      ``alpha' * min_q_weight * (gap_i - tau)`` with
      ``alpha' = clamp(exp(log_alpha'), 0, 1e6)`` and :meth:`alpha_prime_loss`
      ``= -mean_i alpha' * min_q_weight * (gap_i - tau)``.
    * :meth:`mi_critic_loss` (MISA-T, ``mi_critic`` set): minus the bound
      estimated with the MI critic ``T``.

    Each loss moves only its own parameters: the actor loss reads the critics
    through detached parameters, the critic loss reads policy samples as
    data, ``loss_alpha`` moves ``log_alpha`` only and ``loss_alpha_prime``
    ``log_alpha_prime`` only. Each component method takes the input
    tensordict and returns ``(loss, metadata)``; :meth:`forward` computes the
    quantities they share (one actor forward on ``s``, the policy samples,
    the critics at ``[a, a_1..a_k]``) once, as a :class:`MISASharedTerms`
    handed to each of them.

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
        min_q_weight (float): :math:`\gamma_1 \geq 0`, weight of the critic
            regulariser. Default 5.0.
        bc_weight (float): weight (``>= 0``) of the actor's BC / entropy term.
            Default 0.5.
        unbiased_weight (float): weight (``>= 0``) of the MCMC correction.
            Default 0.1.
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
            ~85 ``exp`` overflows float32: ``validate_inputs=True`` turns the
            resulting inf into a ``ValueError``).
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
        step_size (float): initial step size (``> 0``). Default 1.0.
        num_adaptation_steps (int, optional): step-size adaptation steps,
            the sampler's default (80% of the burn-in) when ``None``.
        target_accept (float): adaptation target in ``(0, 1)``. Default 0.75.
        sampler_mode (str): ``"whitened"`` (default), ``"pretanh"`` or
            ``"authors"``, see :func:`torchrl_misa.mcmc.sample_tilted_tanh_normal`.
        num_chains (int): chains per state. Default 1.
        compile_sampler (bool): compile the sampler's transition with
            :func:`torch.compile` (about twice as fast on CPU, after a warm-up
            of seconds). The sampler is never traced by an outer
            ``torch.compile(loss)``: dynamo would unroll its loop over
            transitions. Default ``False``.
        sampler (callable, optional): draws the correction's samples in place
            of the built-in HMC sampler. It is called once per actor loss as
            ``sampler(log_weight_fn, loc, scale, init_action, **options)``:
            ``log_weight_fn`` maps actions ``[*lead, *B, d]`` to
            ``T(s, a)`` ``[*lead, *B]`` (``Qmin`` or the MI critic, frozen:
            gradients reach the actions only), ``loc`` and ``scale`` are the
            policy's pre-tanh parameters ``[*B, d]`` (detached),
            ``init_action`` the batch's actions ``[*B, d]`` and ``options``
            the sampler options above (``num_samples``, ``num_burnin``,
            ``num_leapfrog``, ``step_size``, ``num_adaptation_steps``,
            ``target_accept``, ``num_chains``, ``compile``, ``mode``,
            ``validate``), which it may ignore. It returns the samples
            ``[k, *B, d]`` in ``(-1, 1)`` (detached) and a mapping (e.g. a
            :class:`~tensordict.TensorDict`) with the per-state
            ``"acceptance_rate"``, ``"step_size"`` and ``"num_divergent"``
            ``[*B]`` reported as ``hmc_*``. ``None`` (default) uses
            :func:`~torchrl_misa.mcmc.sample_tilted_tanh_normal`. The sampler
            is an argument, like the networks, so that a caller can draw the
            samples another way (another MCMC kernel, or samples drawn for
            several losses in one batched call) without subclassing the loss
            or reaching into it; :meth:`set_sampler` replaces it after
            construction. ``compile_sampler`` applies to the default sampler
            only.
        lagrange_tau (float, optional): Lagrange budget ``tau`` (Eq. 17);
            ``None`` (default) uses the fixed ``min_q_weight``.
        alpha_init (float): initial entropy temperature (``> 0``). Default 1.0
            (``log_alpha = 0``).
        fixed_alpha (bool): keep alpha at ``alpha_init``. Default ``False``.
        target_entropy (float or "auto"): ``"auto"`` is ``-dim(A)``.
        action_spec (TensorSpec, optional): action spec, read from the actor
            when not given.
        backup_entropy (bool): subtract ``alpha * log pi(a'|s')`` in the
            backup. Default ``False`` (as the authors).
        separate_losses (bool): if ``True``, parameters the critics (or the
            MI critic) share with the actor are trained by the actor loss
            only. Default ``False``, as in
            :class:`~torchrl.objectives.SACLoss`.
        use_prioritized_weights (bool or "auto"): weight every loss's
            per-transition terms by the input's ``"priority_weight"`` entry
            (importance weights of a prioritised buffer). ``"auto"``
            (default) uses them when the entry is present.
        validate_inputs (bool): also check the batch's values: finite
            rewards, actions, observations and priority weights, actions in
            ``[-1, 1]``, done / terminated flags in ``{0, 1}``, and raise on
            MISA-f's ``exp(Q - 1)`` overflow instead of returning ``inf``.
            Costs one host-device synchronisation per call, plus the sampler's
            own value checks. Default ``False``: like TorchRL's losses, the
            default call never waits for the device. Keys, shapes and dtypes
            are checked on every call (no synchronisation); value checks are
            skipped under :func:`torch.compile` and CUDA-graph capture.
        reduction (str): ``"none"`` | ``"mean"`` | ``"sum"``. Default ``"mean"``.
        scalar_output_mode (str, optional): with ``reduction="none"``, what
            becomes of the scalars ``alpha`` and ``alpha_prime``, which have
            no batch dimension: ``"exclude"`` (the default; a warning says so
            unless passed explicitly) or ``"non_tensor"`` (kept as non-tensor
            entries), as in :class:`~torchrl.objectives.SACLoss`.
        deactivate_vmap (bool): loop over the critics instead of
            :func:`torch.vmap`. Default ``False``.

    Input keys (default names, change them with :meth:`set_keys`):
    ``"action"`` ``[*B, d]`` in ``[-1, 1]``, the actor's and critic's
    observation keys and their ``("next", ...)`` versions, ``("next",
    "reward")``, ``("next", "done")``, ``("next", "terminated")`` ``[*B, 1]``
    (done / terminated flags of any bool, integer or float dtype holding 0
    and 1), and, optionally, ``"priority_weight"`` ``[*B]``. Floating
    entries must have the networks' dtype. A loss mask (TorchRL's
    ``("collector", "mask")``, see
    :attr:`~torchrl.objectives.LossModule.loss_mask_key`) leaves padded
    transitions out of every loss, diagnostic and DV pooling.

    Output: a TensorDict with ``loss_actor``, ``loss_qvalue``, ``loss_alpha``
    (``loss_alpha_prime`` with the Lagrange budget, ``loss_mi_critic`` with
    ``mi_critic``) and detached diagnostics ``alpha``, ``entropy``,
    ``mi_bound`` (the bound's estimate, up to the constant data-action
    entropy ``H(A)``), ``q_gap`` (the critic regulariser, averaged over
    critics; the per-state log-mean-exp gap for ``"ba"`` and MISA-T),
    ``hmc_acceptance_rate``, ``hmc_step_size``, ``hmc_num_divergent`` (when
    the sampler runs) and ``alpha_prime``. With ``reduction="mean"`` or
    ``"sum"`` the batch size is empty and the diagnostics are batch means;
    with ``"none"`` the batch size is the input's, losses and diagnostics are
    per transition. The transitions' squared TD errors (max over critics)
    are written to the input under ``"td_error"``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
        >>> from torchrl.modules import TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
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
        >>> updater = SoftUpdate(loss, tau=5e-3)
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

    Each term is also a method of its own, returning ``(loss, metadata)``:

        >>> loss_qvalue, metadata = loss.qvalue_loss(data)
        >>> metadata["td_error"].shape  # [num_qvalue_nets, *batch]
        torch.Size([2, 4])

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

    #: Checks the constructor's options without building the loss (e.g. a
    #: config, before any data loads): raises the ``ValueError`` the constructor
    #: would. Every option is a keyword argument named as in the constructor;
    #: ``mi_critic`` is any object, or ``None`` for the default critic.
    check_options = staticmethod(check_options)

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
            priority_weight (NestedKey): importance weights of a prioritised
                replay buffer. Defaults to ``"priority_weight"``.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

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
        sampler: Callable[..., tuple[Tensor, TensorDictBase]] | None = None,
        lagrange_tau: float | None = None,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: float | str = "auto",
        action_spec=None,
        backup_entropy: bool = False,
        separate_losses: bool = False,
        use_prioritized_weights: str | bool = "auto",
        validate_inputs: bool = False,
        reduction: str | None = None,
        scalar_output_mode: str | None = None,
        deactivate_vmap: bool = False,
    ) -> None:
        self._out_keys = None
        if reduction is None:
            reduction = "mean"
        check_options(
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
            num_adaptation_steps=num_adaptation_steps,
            min_q_weight=min_q_weight,
            bc_weight=bc_weight,
            unbiased_weight=unbiased_weight,
            step_size=step_size,
            target_accept=target_accept,
            alpha_init=alpha_init,
            target_entropy=target_entropy,
            reduction=reduction,
            scalar_output_mode=scalar_output_mode,
            use_prioritized_weights=use_prioritized_weights,
        )
        check_actor(actor_network)
        super().__init__()
        self.use_prioritized_weights = use_prioritized_weights
        self.separate_losses = bool(separate_losses)

        self.convert_to_functional(actor_network, "actor_network")
        # Parameters shared with the actor enter the critics as detached data.
        policy_params = list(actor_network.parameters()) if separate_losses else None
        self.num_qvalue_nets = int(num_qvalue_nets)
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            self.num_qvalue_nets,
            create_target_params=True,
            compare_against=policy_params,
        )
        self.use_mi_critic = mi_critic is not None
        if self.use_mi_critic:
            self.convert_to_functional(
                mi_critic, "mi_critic_network", compare_against=policy_params
            )

        param = next(iter(self.actor_network_params.values(True, True)))
        device, dtype = param.device, param.dtype
        self.fixed_alpha = fixed_alpha
        log_alpha = torch.tensor(math.log(alpha_init), device=device, dtype=dtype)
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", torch.nn.Parameter(log_alpha))
        self.lagrange_tau = None if lagrange_tau is None else float(lagrange_tau)
        if lagrange_tau is not None:
            self.register_parameter(
                "log_alpha_prime",
                torch.nn.Parameter(torch.tensor(1.0, device=device, dtype=dtype)),
            )

        self._action_dim = action_dim(action_spec, actor_network)
        if target_entropy == "auto":
            target_entropy = (
                -float(self._action_dim) if self._action_dim is not None else math.nan
            )
        self._target_entropy_auto = math.isnan(target_entropy)
        self.register_buffer(
            "target_entropy",
            torch.tensor(float(target_entropy), device=device, dtype=dtype),
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
        self.set_sampler(sampler)
        self.backup_entropy = bool(backup_entropy)
        self.validate_inputs = bool(validate_inputs)
        self.deactivate_vmap = deactivate_vmap
        self.reduction = reduction
        if reduction == "none" and scalar_output_mode is None:
            warnings.warn(
                "MISALoss with reduction='none' returns a TensorDict with the input's "
                "batch size, which cannot hold the scalars alpha and alpha_prime: they "
                "are left out (read them as loss._alpha / loss._alpha_prime). Pass "
                "scalar_output_mode='exclude' to silence this warning, or "
                "'non_tensor' to keep them as non-tensor entries.",
                category=UserWarning,
                stacklevel=2,
            )
            scalar_output_mode = "exclude"
        self.scalar_output_mode = scalar_output_mode
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

    def set_sampler(
        self, sampler: Callable[..., tuple[Tensor, TensorDictBase]] | None
    ) -> None:
        """Sets the callable that draws the correction's samples (see ``sampler`` in the class doc).

        ``None`` restores the built-in HMC sampler.
        """
        if sampler is not None:
            if not callable(sampler):
                raise TypeError(
                    "MISALoss: sampler must be a callable "
                    "(log_weight_fn, loc, scale, init_action, **options) -> "
                    "(samples, info), or None for the built-in HMC sampler; got "
                    f"an object of type {type(sampler).__name__}."
                )
            if not self.unbiased_correction:
                raise ValueError(
                    "MISALoss: a sampler was given but the loss draws no samples "
                    "(unbiased_correction=False); drop the sampler or set "
                    "unbiased_correction=True."
                )
        self.sampler = sampler

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
        check_value_hyperparams(hyperparams)
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
    def _required_keys(self) -> list[NestedKey]:
        obs = self._obs_keys
        keys = self.tensor_keys
        return [
            keys.action,
            *obs,
            *[next_key(k) for k in obs],
            next_key(keys.reward),
            next_key(keys.done),
            next_key(keys.terminated),
        ]

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self._required_keys
        if self.use_prioritized_weights:
            keys.append(self.tensor_keys.priority_weight)
        return keys

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = ["loss_actor", "loss_qvalue", "loss_alpha"]
            if self.lagrange_tau is not None:
                keys.append("loss_alpha_prime")
            if self.use_mi_critic:
                keys.append("loss_mi_critic")
            scalars = self.reduction != "none" or self.scalar_output_mode != "exclude"
            if scalars:
                keys.append("alpha")
            keys += ["entropy", "mi_bound", "q_gap"]
            if self.unbiased_correction:
                keys += ["hmc_acceptance_rate", "hmc_step_size", "hmc_num_divergent"]
            if self.lagrange_tau is not None and scalars:
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
    def _alpha_prime(self) -> Tensor:
        """``clamp(exp(log_alpha'), 0, 1e6)``, differentiable (Lagrange form)."""
        return self.log_alpha_prime.exp().clamp(0.0, 1e6)

    @property
    @_cache_values
    def _cached_detach_qvalue_params(self) -> TensorDictBase:
        return self.qvalue_network_params.detach()

    def _validating(self) -> bool:
        return self.validate_inputs and not _capturing()

    # --------------------------------------------------------------- forward
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the MISA losses for a batch of transitions (see class doc)."""
        shared = self.shared_terms(tensordict)
        losses = {}
        losses["loss_qvalue"], q_meta = self.qvalue_loss(tensordict, shared)
        losses["loss_actor"], actor_meta = self.actor_loss(tensordict, shared)
        losses["loss_alpha"], _ = self.alpha_loss(tensordict, shared)
        if self.lagrange_tau is not None:
            losses["loss_alpha_prime"], _ = self.alpha_prime_loss(tensordict, shared)
        if self.use_mi_critic:
            losses["loss_mi_critic"], _ = self.mi_critic_loss(tensordict, shared)
        tensordict.set(self.tensor_keys.priority, q_meta["td_error"].max(0).values)

        per_state = {
            "entropy": -actor_meta["log_prob"],
            "mi_bound": self._mi_bound(shared),
            "q_gap": shared.gaps.detach().mean(0),
        }
        for name in ("hmc_acceptance_rate", "hmc_step_size", "hmc_num_divergent"):
            if name in actor_meta:
                per_state[name] = actor_meta[name]
        scalars = {"alpha": self._alpha}
        if self.lagrange_tau is not None:
            scalars["alpha_prime"] = self._alpha_prime.detach()

        if self.reduction == "none":
            for name, value in per_state.items():
                losses[name] = self._reduce_loss(value, tensordict, reduction="none")
            out = TensorDict(losses, batch_size=tensordict.batch_size)
            if self.scalar_output_mode == "non_tensor":
                for name, value in scalars.items():
                    out.set_non_tensor(name, value)
        else:
            for name, value in per_state.items():
                losses[name] = self._reduce_loss(value, tensordict, reduction="mean")
            out = TensorDict({**losses, **scalars}, batch_size=[])
        self._clear_weakrefs(tensordict, out, *_PARAMS)
        return out

    # ------------------------------------------------------- the loss terms
    def shared_terms(self, tensordict: TensorDictBase) -> MISASharedTerms:
        """Checks the batch and computes what the losses share (see :class:`MISASharedTerms`).

        One actor forward on ``s`` (``a~``, ``log pi(a~|s)``, ``log pi(a|s)``,
        ``k`` policy samples), the critics at ``[a, a_1..a_k]`` in one call
        and, for MISA-T, the MI critic at the same actions.
        """
        self._check_batch(tensordict)
        keys = self.tensor_keys
        action = tensordict.get(keys.action)
        if self._target_entropy_auto:
            self.target_entropy.fill_(-float(action.shape[-1]))
            self._target_entropy_auto = False
        obs = tensordict.select(*self._obs_keys)
        dist = self._policy_dist(obs, self.actor_network_params)
        action_new, log_prob = dist.rsample_and_log_prob()
        log_prob_data = dist.log_prob(action)
        with torch.no_grad():
            action_pi = dist.sample((self.num_policy_samples,))

        params = self.qvalue_network_params
        both = torch.cat([action.unsqueeze(0), action_pi])
        if self.regularise_critics:
            q_all = self._q_values(obs, both, params)
            q_data, q_pi = q_all[:, 0], q_all[:, 1:]
        else:  # q_pi only feeds the q_gap diagnostic: no graph through it
            q_data = self._q_values(obs, action, params)
            with torch.no_grad():
                q_pi = self._q_values(obs, action_pi, params)
        t_data = t_pi = None
        if self.use_mi_critic:
            t_all = self._mi_values(obs, both, self.mi_critic_network_params)
            t_data, t_pi = t_all[0], t_all[1:]
        valid = self._valid_mask(tensordict)
        return MISASharedTerms(
            obs=obs,
            action=action,
            dist=dist,
            action_new=action_new,
            log_prob=log_prob,
            log_prob_data=log_prob_data,
            action_pi=action_pi,
            q_data=q_data,
            q_pi=q_pi,
            gaps=critic_gap(self.mi_estimator, q_pi, q_data, valid),
            t_data=t_data,
            t_pi=t_pi,
            valid=valid,
        )

    def qvalue_loss(
        self, tensordict: TensorDictBase, shared: MISASharedTerms | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The critics' loss: squared TD error plus the MI regulariser (Eq. 12).

        Returns the loss and ``{"td_error": (Q_i(s, a) - y)^2}`` ``[n_q, *B]``,
        detached.
        """
        if shared is None:
            shared = self.shared_terms(tensordict)
        target = self._td_target(tensordict)
        td_error = (shared.q_data - target).pow(2)
        loss = td_error
        if self.mi_estimator == "f" and self._validating():
            check_f_bound(shared.gaps, shared.q_pi)
        if self.regularise_critics:
            if self.lagrange_tau is not None:
                slack = self.min_q_weight * (shared.gaps - self.lagrange_tau)
                loss = loss + self._alpha_prime.detach() * slack
            else:
                loss = loss + self.min_q_weight * shared.gaps
        loss = self._reduce(loss.sum(0), tensordict)
        self._clear_weakrefs(tensordict, *_PARAMS)
        return loss, {"td_error": td_error.detach()}

    def actor_loss(
        self, tensordict: TensorDictBase, shared: MISASharedTerms | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The actor's loss (Eq. 13) with the MCMC correction of Eq. 15.

        Returns the loss and ``log_prob`` (``log pi(a~|s)``) and, when the
        sampler runs, its per-state ``hmc_acceptance_rate``, ``hmc_step_size``
        and ``hmc_num_divergent``, all detached ``[*B]``.
        """
        if shared is None:
            shared = self.shared_terms(tensordict)
        q_new = self._q_values(
            shared.obs, shared.action_new, self._cached_detach_qvalue_params
        )
        bc = self._alpha * shared.log_prob
        if self.bc_term:
            bc = bc - shared.log_prob_data
        loss = self.bc_weight * bc - q_new.min(0).values
        metadata = {"log_prob": shared.log_prob.detach()}
        if self.unbiased_correction:
            a_mc, info = self._sample_tilted(shared)
            log_prob_mc = shared.dist.log_prob(a_mc)
            weight = correction_weight(
                self.mi_estimator, shared.energy_pi, shared.valid
            )
            loss = loss + self.unbiased_weight * weight * log_prob_mc.mean(0)
            dtype = loss.dtype
            metadata["hmc_acceptance_rate"] = info.get("acceptance_rate").to(dtype)
            metadata["hmc_step_size"] = info.get("step_size").to(dtype)
            metadata["hmc_num_divergent"] = info.get("num_divergent").to(dtype)
        loss = self._reduce(loss, tensordict)
        self._clear_weakrefs(tensordict, *_PARAMS)
        return loss, metadata

    def alpha_loss(
        self, tensordict: TensorDictBase, shared: MISASharedTerms | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The temperature's loss ``-log_alpha * (log pi(a~|s) + target_entropy)``."""
        if shared is None:
            shared = self.shared_terms(tensordict)
        loss = -self.log_alpha * (shared.log_prob.detach() + self.target_entropy)
        loss = self._reduce(loss, tensordict)
        self._clear_weakrefs(tensordict, *_PARAMS)
        return loss, {}

    def alpha_prime_loss(
        self, tensordict: TensorDictBase, shared: MISASharedTerms | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The Lagrange multiplier's loss ``-mean_i alpha' * min_q_weight * (gap_i - tau)``."""
        if self.lagrange_tau is None:
            raise RuntimeError(
                "MISALoss.alpha_prime_loss needs the Lagrange form: build the loss "
                "with lagrange_tau=<budget>."
            )
        if shared is None:
            shared = self.shared_terms(tensordict)
        slack = self.min_q_weight * (shared.gaps.detach() - self.lagrange_tau)
        loss = -(self._alpha_prime * slack).mean(0)
        loss = self._reduce(loss, tensordict)
        self._clear_weakrefs(tensordict, *_PARAMS)
        return loss, {}

    def mi_critic_loss(
        self, tensordict: TensorDictBase, shared: MISASharedTerms | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """MISA-T's MI critic loss: minus the bound estimated with ``T``."""
        if not self.use_mi_critic:
            raise RuntimeError(
                "MISALoss.mi_critic_loss needs MISA-T: build the loss with "
                "mi_critic=<T network>."
            )
        if shared is None:
            shared = self.shared_terms(tensordict)
        norm = log_normaliser(self.mi_estimator, shared.t_pi, shared.valid)
        bound = shared.log_prob_data.detach() + shared.t_data - norm
        loss = self._reduce(-bound, tensordict)
        self._clear_weakrefs(tensordict, *_PARAMS)
        return loss, {}

    # ---------------------------------------------------------------- pieces
    def _reduce(self, loss: Tensor, tensordict: TensorDictBase) -> Tensor:
        """Reduces per-transition terms, with the priority weights if any."""
        weights = self._maybe_get_priority_weight(tensordict)
        if weights is not None:
            weights = check_weights(weights, tensordict.batch_size)
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights)

    def _valid_mask(self, tensordict: TensorDictBase) -> Tensor | None:
        """The loss mask ``[*B]`` TorchRL's reductions apply, if the input has one."""
        mask = None
        for key in self._loss_mask_keys():
            value = tensordict.get(key, default=None)
            if value is not None:
                value = value.reshape(tensordict.batch_size).bool()
                mask = value if mask is None else mask & value
        return mask

    def _mi_bound(self, shared: MISASharedTerms) -> Tensor:
        """The estimator's MI lower bound per state (up to ``H(A)``), detached."""
        bound = shared.log_prob_data.detach()
        if self.mi_estimator == "ba":
            return bound
        norm = log_normaliser(self.mi_estimator, shared.energy_pi, shared.valid)
        return bound + shared.energy_data - norm

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
        value = out.get(self.tensor_keys.state_action_value)
        _check_value_shape(
            "qvalue_network", value, (self.num_qvalue_nets, *actions.shape[:-1], 1)
        )
        return value.squeeze(-1)

    def _mi_values(
        self, obs: TensorDictBase, actions: Tensor, params: TensorDictBase
    ) -> Tensor:
        """``T(s, a)`` of the MI critic: ``[*actions.shape[:-1]]``."""
        td = obs.expand(actions.shape[:-1]).set(self.tensor_keys.action, actions)
        with params.to_module(self.mi_critic_network, preserve_module_state=False):
            out = self.mi_critic_network(td)
        value = out.get(self.tensor_keys.state_action_value)
        _check_value_shape("mi_critic", value, (*actions.shape[:-1], 1))
        return value.squeeze(-1)

    def _td_target(self, tensordict: TensorDictBase) -> Tensor:
        """``y = r + gamma (1 - terminated) min_i Qtarget_i(s', a')``: ``[*B]``."""
        keys = self.tensor_keys
        with torch.no_grad():
            next_obs = tensordict.get("next").select(*self._obs_keys)
            # detach(), not .data: the same values, and allowed under torch.vmap
            next_dist = self._policy_dist(next_obs, self.actor_network_params.detach())
            a_next, log_prob_next = next_dist.sample_and_log_prob()
            q_next = self._q_values(next_obs, a_next, self.target_qvalue_network_params)
            v_next = q_next.min(0).values
            if self.backup_entropy:
                v_next = v_next - self._alpha * log_prob_next
            # TorchRL's estimators read the flags with `~`: an integer 0 would
            # become -1 and a float would fail. 0/1 flags of any dtype -> bool.
            value_td = tensordict.copy()
            for name in (keys.done, keys.terminated):
                key = next_key(name)
                value_td.set(key, value_td.get(key).bool())
            target = self.value_estimator.value_estimate(
                value_td, next_value=v_next.unsqueeze(-1)
            )
        return target.squeeze(-1)

    @property
    def _tilted_weight_params_name(self) -> str:
        """The parameters of ``T`` in the sampler's target: the MI critic's or the critics'."""
        if self.use_mi_critic:
            return "mi_critic_network_params"
        return "qvalue_network_params"

    def _tilted_log_weight(
        self, obs: TensorDictBase, actions: Tensor, params: TensorDictBase
    ) -> Tensor:
        """``T(s, a)`` of the sampler's target with ``params`` (see :meth:`_log_weight_fn`).

        The networks run through :func:`torch.func.functional_call`, which
        swaps no module attribute: under ``torch.compile`` the chain is a
        ``scan`` whose body may not mutate modules (``to_module`` does).
        """
        td = obs.expand(actions.shape[:-1]).set(self.tensor_keys.action, actions)
        if self.use_mi_critic:
            value = _functional_value(
                self.mi_critic_network, self._value_key, td, params
            )
            _check_value_shape("mi_critic", value, (*actions.shape[:-1], 1))
            return value.squeeze(-1)
        call = functools.partial(
            _functional_value, self.qvalue_network, self._value_key, td
        )
        if self.deactivate_vmap:
            value = torch.stack([call(params[i]) for i in range(self.num_qvalue_nets)])
        else:
            value = torch.vmap(call, randomness=self.vmap_randomness)(params)
        expected = (self.num_qvalue_nets, *actions.shape[:-1], 1)
        _check_value_shape("qvalue_network", value, expected)
        return value.squeeze(-1).min(0).values

    @property
    def _value_key(self) -> NestedKey:
        return self.tensor_keys.state_action_value

    def _log_weight_fn(self, shared: MISASharedTerms) -> Callable[[Tensor], Tensor]:
        """``a -> T(s, a)`` for the sampler: ``Qmin`` (or the MI critic), frozen.

        ``a`` is ``[*lead, *B, d]`` (``lead``: the sampler's chain
        dimensions). The critics run through the same vmapped functional call
        as in the losses, on detached parameters: gradients flow to ``a`` only.
        """
        if self.use_mi_critic:
            params = self.mi_critic_network_params.detach()
        else:
            params = self._cached_detach_qvalue_params
        return functools.partial(self._tilted_log_weight, shared.obs, params=params)

    def _sampler_options(self, validate: bool) -> dict:
        """The keyword arguments of the sampler (:func:`~torchrl_misa.mcmc.sample_tilted_tanh_normal`)."""
        return {
            "num_samples": self.num_mcmc_samples,
            "num_burnin": self.num_burnin,
            "num_leapfrog": self.num_leapfrog,
            "step_size": self.step_size,
            "num_adaptation_steps": self.num_adaptation_steps,
            "target_accept": self.target_accept,
            "num_chains": self.num_chains,
            "compile": self.compile_sampler,
            "mode": self.sampler_mode,
            "validate": validate,
        }

    def _sample_tilted(self, shared: MISASharedTerms) -> tuple[Tensor, TensorDictBase]:
        """Samples of ``p(a|s) ∝ pi(a|s) exp T(s, a)``: ``[k, *B, d]`` and info.

        Drawn by ``sampler`` if one was given, by the built-in HMC sampler
        otherwise.
        """
        sampler = self.sampler
        if sampler is None:
            sampler = run_sampler(self.compile_sampler)
        out = sampler(
            self._log_weight_fn(shared),
            shared.dist.loc.detach(),
            shared.dist.scale.detach(),
            shared.action,
            **self._sampler_options(self._validating()),
        )
        if self.sampler is not None:
            _check_samples(out, shared.action)
        return out

    def _check_batch(self, tensordict: TensorDictBase) -> None:
        keys = self.tensor_keys
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
        obs_keys = self._obs_keys
        check_batch(
            tensordict,
            required=self._required_keys,
            keys=keys,
            obs_keys=obs_keys,
            action_dim=self._action_dim,
            dtype=self.log_alpha.dtype,
        )
        if self._validating():
            weights = self._maybe_get_priority_weight(tensordict)
            check_batch_values(
                tensordict,
                keys=keys,
                obs_keys=obs_keys,
                weights=None if weights is None else weights.detach(),
            )


# ----------------------------------------------------------------- helpers
@torch.compiler.disable
def _sample_outside_graph(*args, **kwargs) -> tuple[Tensor, TensorDictBase]:
    # compile_sampler=True: the chain stays out of an outer torch.compile and
    # runs its own compiled transition in a Python loop, which a CUDA graph
    # captures whole (a scanned chain is a host-driven loop on the device).
    return _mcmc.sample_tilted_tanh_normal(*args, **kwargs)


def run_sampler(compile_sampler: bool) -> Callable[..., tuple[Tensor, TensorDictBase]]:
    """The sampler call of a loss.

    Traced by an outer ``torch.compile`` (as one scan) unless
    ``compile_sampler`` compiles each transition on its own.
    """
    if compile_sampler:
        return _sample_outside_graph
    return _mcmc.sample_tilted_tanh_normal


def _check_samples(out, action: Tensor) -> None:
    """A given sampler's output: ``[k, *B, d]`` samples and the ``hmc_*`` info."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise ValueError(
            "MISALoss: the sampler must return a pair (samples, info), got "
            f"{type(out).__name__}."
        )
    samples, info = out
    if not isinstance(samples, Tensor) or (
        samples.ndim != action.ndim + 1 or samples.shape[1:] != action.shape
    ):
        got = list(samples.shape) if isinstance(samples, Tensor) else type(samples)
        raise ValueError(
            f"MISALoss: the sampler returned samples {got}; expected a tensor of "
            f"shape [k, *batch, action_dim] = [k, {', '.join(map(str, action.shape))}]."
        )
    for name in ("acceptance_rate", "step_size", "num_divergent"):
        if info.get(name, None) is None:
            raise ValueError(
                f"MISALoss: the sampler's info has no {name!r} entry; return "
                "(samples, info) with info holding the per-state "
                "'acceptance_rate', 'step_size' and 'num_divergent'."
            )


def _functional_value(
    module: TensorDictModule, key: NestedKey, td: TensorDictBase, params: TensorDictBase
) -> Tensor:
    """``module(td)[key]`` with ``params``, through :func:`torch.func.functional_call`."""
    tensors = dict(params.flatten_keys(".").items())
    return torch.func.functional_call(module, tensors, (td,)).get(key)


def _capturing() -> bool:
    if is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_value_shape(name: str, value: Tensor, expected: tuple[int, ...]) -> None:
    if value.shape != expected:
        raise ValueError(
            f"MISALoss: {name} returned values of shape {list(value.shape)}, expected "
            f"{list(expected)}: one value per state-action pair, with a trailing "
            "dimension of 1 (e.g. an MLP with out_features=1)."
        )
