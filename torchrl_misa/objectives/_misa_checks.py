"""MISALoss's checks: options at construction, batches at every call.

The batch checks come in two kinds. :func:`check_batch` reads only keys,
shapes and dtypes, which the host knows without waiting for the device: it
runs on every call. :func:`check_batch_values` reads the values (finite,
within bounds) and costs one host-device synchronisation: it runs only with
``validate_inputs=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
)
from tensordict.utils import NestedKey, unravel_key

from torchrl.data.tensor_specs import Composite
from torchrl.modules.distributions import TanhNormal

from torchrl_misa.mcmc import check_counts, SAMPLER_MODES
from torchrl_misa.objectives._misa_bounds import MI_ESTIMATORS

REDUCTIONS = ("none", "mean", "sum")
SCALAR_OUTPUT_MODES = (None, "exclude", "non_tensor")


def next_key(key: NestedKey) -> tuple:
    """``("next", *key)`` for a flat or nested key."""
    key = unravel_key(key)
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


# ------------------------------------------------------------ construction
def _real(name: str, value, *, low: float | None = None, strict: bool = False):
    """``value`` as a finite float, at least (or above, ``strict``) ``low``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if low is not None and (number <= low if strict else number < low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return number


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_options(
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
    num_adaptation_steps,
    min_q_weight,
    bc_weight,
    unbiased_weight,
    step_size,
    target_accept,
    alpha_init,
    target_entropy,
    reduction,
    scalar_output_mode,
    use_prioritized_weights,
) -> None:
    """Refuses unknown, contradictory, non-finite or out-of-range options."""
    if mi_estimator not in MI_ESTIMATORS:
        raise ValueError(
            f"mi_estimator must be one of {MI_ESTIMATORS}, got {mi_estimator!r}."
        )
    if sampler_mode not in SAMPLER_MODES:
        raise ValueError(
            f"sampler_mode must be one of {SAMPLER_MODES}, got {sampler_mode!r}."
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if scalar_output_mode not in SCALAR_OUTPUT_MODES:
        raise ValueError(
            f"scalar_output_mode must be one of {SCALAR_OUTPUT_MODES}, got "
            f"{scalar_output_mode!r}."
        )
    if use_prioritized_weights not in (True, False, "auto"):
        raise ValueError(
            "use_prioritized_weights must be True, False or 'auto', got "
            f"{use_prioritized_weights!r}."
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
    if lagrange_tau is not None:
        _real("lagrange_tau", lagrange_tau)
        if mi_estimator == "ba" or mi_critic is not None:
            raise ValueError(
                "lagrange_tau tunes the critics' MI regulariser, which 'ba' and "
                "MISA-T (mi_critic) do not have; set lagrange_tau=None."
            )
    _integer("num_qvalue_nets", num_qvalue_nets, 1)
    if num_policy_samples is not None:
        _integer("num_policy_samples", num_policy_samples, 1)
    # The sampler's counts, with the sampler's own rules (one check for both).
    try:
        check_counts(
            num_samples=num_mcmc_samples,
            num_burnin=num_burnin,
            num_leapfrog=num_leapfrog,
            num_chains=num_chains,
            num_adaptation_steps=num_adaptation_steps,
        )
    except ValueError as err:
        raise ValueError(str(err).replace("num_samples", "num_mcmc_samples")) from None
    # Negative weights would turn a penalty into a reward (and the MCMC
    # correction into an ascent on the tilted likelihood).
    for name, value in (
        ("min_q_weight", min_q_weight),
        ("bc_weight", bc_weight),
        ("unbiased_weight", unbiased_weight),
    ):
        _real(name, value, low=0.0)
    _real("step_size", step_size, low=0.0, strict=True)
    if not 0.0 < _real("target_accept", target_accept) < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}.")
    _real("alpha_init", alpha_init, low=0.0, strict=True)
    if isinstance(target_entropy, str):
        if target_entropy != "auto":
            raise ValueError(
                f"target_entropy must be a number or 'auto', got {target_entropy!r}."
            )
    elif target_entropy is None:
        raise ValueError(
            "target_entropy must be a number or 'auto' (-dim(A)), got None; to keep "
            "the temperature fixed, pass fixed_alpha=True."
        )
    else:
        _real("target_entropy", target_entropy)


def check_value_hyperparams(hyperparams: dict) -> None:
    """Refuses a discount ``gamma`` (or a TD(lambda) ``lmbda``) outside ``[0, 1]``.

    Called by :meth:`MISALoss.make_value_estimator` before TorchRL builds the
    estimator: a ``gamma`` of ``nan`` would turn every parameter NaN after
    one step, and one above 1 makes the backup diverge.

    Examples:
        >>> check_value_hyperparams({"gamma": 0.99})
        >>> check_value_hyperparams({"gamma": float("nan")})
        Traceback (most recent call last):
        ...
        ValueError: gamma must be finite, got nan.
    """
    for name in ("gamma", "lmbda"):
        if name not in hyperparams:
            continue
        value = hyperparams[name]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} must be one number, got shape {value.shape}.")
            value = value.item()  # once, when the estimator is built
        if not 0.0 <= _real(name, value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def check_actor(actor_network) -> None:
    """Refuses an actor that is not a TanhNormal on ``[-1, 1]``."""
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
    low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)
    if low_t.is_meta or high_t.is_meta:
        return  # no values to check (a model built on the meta device)
    if not (bool(torch.all(low_t == -1.0)) and bool(torch.all(high_t == 1.0))):
        raise ValueError(
            "MISALoss needs a TanhNormal on [-1, 1] (low=-1, high=1); got "
            f"low={low}, high={high}. Rescale the actions to [-1, 1] instead."
        )


def action_dim(action_spec, actor_network) -> int | None:
    """The action's last dimension from the spec (or the actor's), if known."""
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


# ------------------------------------------------------------------ batches
def check_batch(
    tensordict: TensorDictBase,
    *,
    required: Sequence[NestedKey],
    keys,
    obs_keys: Sequence[NestedKey],
    action_dim: int | None,
    dtype: torch.dtype,
) -> None:
    """Keys, batch size, shapes and dtypes of a batch: no host sync."""
    present = set(tensordict.keys(True, True))
    missing = [k for k in required if unravel_key(k) not in present]
    if missing:
        raise ValueError(
            f"MISALoss: the input is missing the entries {missing}. "
            "Provide them, or rename the expected keys with "
            "loss.set_keys(action=..., reward=..., done=..., terminated=...)."
        )
    batch = tensordict.batch_size
    if len(batch) == 0:
        raise ValueError(
            "MISALoss: the input tensordict has an empty batch size; give it "
            "the batch dimensions of the transitions, e.g. TensorDict(..., batch_size=[B])."
        )
    if batch.numel() == 0:
        raise ValueError(
            f"MISALoss: the batch holds no transitions (batch size {list(batch)}); "
            "sample at least one transition per update."
        )
    action = tensordict.get(keys.action)
    if (
        action.shape[:-1] != batch
        or action.ndim != len(batch) + 1
        or (action_dim is not None and action.shape[-1] != action_dim)
    ):
        d = action_dim if action_dim is not None else "d"
        expected = f"[{', '.join(str(b) for b in batch)}, {d}]"
        raise ValueError(
            f"MISALoss: action has shape {list(action.shape)}, expected {expected} "
            "(batch dimensions, then the action dimension)."
        )
    for name in (keys.reward, keys.done, keys.terminated):
        value = tensordict.get(next_key(name))
        if value.shape != (*batch, 1):
            raise ValueError(
                f"MISALoss: ('next', {name!r}) has shape {list(value.shape)}, "
                f"expected {[*batch, 1]} (one value per transition, trailing 1)."
            )
    for name in (keys.done, keys.terminated):
        flag = tensordict.get(next_key(name))
        if flag.is_complex():
            raise ValueError(
                f"MISALoss: ('next', {name!r}) must hold 0/1 flags (bool, integer "
                f"or float), got {flag.dtype}."
            )
    reward = tensordict.get(next_key(keys.reward))
    for key, value in ((keys.action, action), (next_key(keys.reward), reward)):
        if not value.is_floating_point():
            raise ValueError(
                f"MISALoss: {key!r} must be a floating point tensor, got {value.dtype}."
            )
    # Integer observations (e.g. indices embedded by the networks) pass as they are.
    obs = [next_key(k) for k in obs_keys] + list(obs_keys)
    for key in [keys.action, next_key(keys.reward), *obs]:
        value = tensordict.get(key)
        if value.is_floating_point() and value.dtype != dtype:
            raise ValueError(
                f"MISALoss: {key!r} is {value.dtype} but the networks' parameters are "
                f"{dtype}; cast the batch (e.g. data.to({dtype})) or the loss "
                f"(loss.to({value.dtype})) so that they match."
            )


def check_weights(weights: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """Priority weights ``[*B]`` (a trailing 1 is dropped): no host sync."""
    if weights.shape == (*batch, 1):
        weights = weights.squeeze(-1)
    if weights.shape != batch:
        raise ValueError(
            f"MISALoss: the priority weights have shape {list(weights.shape)}, "
            f"expected the batch size {list(batch)} (one weight per transition)."
        )
    return weights


def check_batch_values(
    tensordict: TensorDictBase,
    *,
    keys,
    obs_keys: Sequence[NestedKey],
    weights: torch.Tensor | None,
) -> None:
    """Finite values, actions in ``[-1, 1]``, 0/1 flags: one host sync."""
    reward = tensordict.get(next_key(keys.reward))
    action = tensordict.get(keys.action)
    obs = [tensordict.get(k) for k in obs_keys]
    obs += [tensordict.get(next_key(k)) for k in obs_keys]
    obs = [v for v in obs if v.is_floating_point()]
    flags = [tensordict.get(next_key(k)) for k in (keys.done, keys.terminated)]
    bad = [
        ~torch.isfinite(reward).all(),
        ~torch.isfinite(action).all(),
        (action.abs() > 1.0).any(),
        (
            torch.stack([~torch.isfinite(v).all() for v in obs]).any()
            if obs
            else torch.zeros((), dtype=torch.bool, device=reward.device)
        ),
        torch.stack([((f != 0) & (f != 1)).any() for f in flags]).any(),
        (
            (~torch.isfinite(weights).all() | (weights < 0).any())
            if weights is not None
            else torch.zeros((), dtype=torch.bool, device=reward.device)
        ),
    ]
    found = torch.stack([b.to(reward.device) for b in bad]).tolist()  # the one sync
    if found[0]:
        raise ValueError(
            "MISALoss: ('next', reward) holds NaN or infinite values; clean or "
            "drop those transitions before training."
        )
    if found[1]:
        raise ValueError("MISALoss: the action holds NaN or infinite values.")
    if found[2]:
        raise ValueError(
            f"MISALoss: actions must lie in [-1, 1] (tanh-squashed policy); got "
            f"values in [{action.min().item():.4g}, {action.max().item():.4g}]. "
            "Rescale the dataset's actions to [-1, 1] (and clip to +-0.999)."
        )
    if found[3]:
        raise ValueError("MISALoss: an observation entry holds NaN or infinite values.")
    if found[4]:
        raise ValueError(
            "MISALoss: the done / terminated flags must be 0 or 1 (False or True); "
            "other values would be read as True."
        )
    if found[5]:
        raise ValueError(
            "MISALoss: the priority weights must be finite and non-negative."
        )
