"""Samples of ``p(a|s) ∝ pi(a|s) exp w(s, a)`` for a tanh-Normal policy ``pi``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor

from .checks import check_counts
from .sampler import hmc_sample

# The coordinates the chains move in; see sample_tilted_tanh_normal.
SAMPLER_MODES = ("whitened", "pretanh", "authors")
# TFP's default SimpleStepSizeAdaptation rate, used by the published code.
AUTHORS_ADAPTATION_RATE = 0.01
_EDGE = 1e-6  # actions are kept in [-1 + _EDGE, 1 - _EDGE] so log pi stays finite


def sample_tilted_tanh_normal(
    log_weight_fn: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale: Tensor,
    init_action: Tensor,
    *,
    num_samples: int = 50,
    num_burnin: int = 5,
    num_leapfrog: int = 2,
    step_size: float = 1.0,
    num_adaptation_steps: int | None = None,
    target_accept: float = 0.75,
    adaptation_rate: float = 0.1,
    num_chains: int = 1,
    num_group_dims: int = 0,
    generator: torch.Generator | None = None,
    compile: bool = False,
    mode: str = "whitened",
    validate: bool = True,
) -> tuple[Tensor, TensorDict]:
    """HMC samples of ``p(a|s) ∝ pi(a|s) exp w(s, a)``, ``pi = tanh(N(loc, scale))``.

    This is the distribution whose samples MISA's unbiased actor gradient needs
    (``w = Qmin``). Chains start at ``init_action`` (the dataset action).

    Modes:
        ``"whitened"`` (default): chains move in the pre-tanh space ``u``
        (``a = tanh u``), where the target is ``N(u; loc, scale) exp w(tanh u)``
        (the density of ``u``: no Jacobian term, no boundary), preconditioned by
        the policy's own ``scale`` (``z = (u - loc) / scale`` has unit scale
        under ``pi``), so one step size, adapted on the batch's mean
        acceptance, suits every state.
        ``"pretanh"``: the same target in ``u`` without the preconditioner.
        ``"authors"``: the published sampler, HMC in action space on
        ``log TanhNormal(a) + w(a)``, proposals outside ``(-1, 1)^d`` rejected,
        adapted at TFP's default rate 0.01
        (``adaptation_rate`` is ignored). With a trained policy's small scale it
        rarely, if ever, accepts a move.

    Args:
        log_weight_fn: ``actions [*chain_batch, d] -> [*chain_batch]``, e.g.
            ``Qmin(s, a)``; with ``num_chains > 1`` the actions have a leading
            chain dimension: ``[num_chains, *batch, d]``.
        loc, scale: pre-tanh mean and standard deviation of the policy, ``[*batch, d]``.
        init_action: ``[*batch, d]`` in ``[-1, 1]``.

    Keyword Args:
        num_samples: samples kept per state, all chains together. Default 50.
        num_burnin: transitions discarded first. Default 5.
        num_leapfrog: leapfrog steps per transition. Default 2.
        step_size: initial step size. Default 1.0.
        num_adaptation_steps: burn-in transitions that adapt the step size;
            ``None``: ``num_burnin - 1``.
        target_accept: acceptance aimed at by the adaptation. Default 0.75.
        adaptation_rate: the adaptation's multiplicative rate. Default 0.1.
        num_chains: chains per state. Default 1.
        num_group_dims: leading batch dimensions that index independent
            problems (e.g. agents), each with its own adapted step size (see
            :func:`~torchrl_misa.mcmc.hmc_sample`). Default 0.
        generator: the random generator of the momenta and uniforms.
        compile: run the kernel's compiled transition. Default ``False``.
        mode: ``"whitened"``, ``"pretanh"`` or ``"authors"`` (see above).
        validate: check that ``loc``, ``scale`` and ``init_action`` are finite,
            ``scale > 0`` and ``init_action`` lies in ``[-1, 1]`` (host syncs),
            and the sampler's own value checks. Shapes are always checked.
            Default ``True``.

    Returns:
        actions ``[num_samples, *batch, d]`` strictly inside ``(-1, 1)`` (detached)
        and the info TensorDict of :func:`~torchrl_misa.mcmc.hmc_sample`.

    Examples:
        >>> import torch
        >>> from torchrl_misa.mcmc import sample_tilted_tanh_normal
        >>> loc, scale = torch.zeros(8, 2), torch.ones(8, 2)
        >>> w = lambda a: -((a - 0.5) ** 2).sum(-1)  # a critic preferring a = 0.5
        >>> actions, info = sample_tilted_tanh_normal(w, loc, scale, torch.zeros(8, 2), num_samples=10)
        >>> actions.shape, bool(actions.abs().max() < 1)
        (torch.Size([10, 8, 2]), True)
    """
    if mode not in SAMPLER_MODES:
        raise ValueError(
            f"Unknown sampler mode {mode!r}; choose one of {SAMPLER_MODES}."
        )
    check_counts(
        num_samples=num_samples,
        num_burnin=num_burnin,
        num_leapfrog=num_leapfrog,
        num_chains=num_chains,
        num_adaptation_steps=num_adaptation_steps,
    )
    loc, scale, init_action = _check_inputs(loc, scale, init_action, validate)
    init_action = init_action.clamp(-1 + _EDGE, 1 - _EDGE)
    common = {
        "num_samples": num_samples,
        "num_burnin": num_burnin,
        "num_leapfrog": num_leapfrog,
        "step_size": step_size,
        "num_adaptation_steps": num_adaptation_steps,
        "target_accept": target_accept,
        "num_chains": num_chains,
        "num_group_dims": num_group_dims,
        "generator": generator,
        "compile": compile,
        "validate": validate,
    }

    if mode == "authors":
        samples, info = hmc_sample(
            _ActionSpaceTarget(log_weight_fn, loc, scale),
            init_action,
            adaptation_rate=AUTHORS_ADAPTATION_RATE,
            shared_step_size=True,
            **common,
        )
        return samples.clamp(-1 + _EDGE, 1 - _EDGE), info
    samples, info = hmc_sample(
        _PreTanhTarget(log_weight_fn, loc, scale),
        torch.atanh(init_action),
        adaptation_rate=adaptation_rate,
        scale=scale if mode == "whitened" else None,
        **common,
    )
    return torch.tanh(samples).clamp(-1 + _EDGE, 1 - _EDGE), info


class _PreTanhTarget:
    """``log N(u; loc, scale) + w(tanh u)`` up to a constant."""

    def __init__(self, log_weight_fn, loc, scale):
        self.log_weight_fn, self.loc, self.scale = log_weight_fn, loc, scale

    def __call__(self, u: Tensor) -> Tensor:
        log_pi = -0.5 * ((u - self.loc) / self.scale).pow(2).sum(-1)
        return log_pi + _log_weight(self.log_weight_fn, torch.tanh(u))


class _ActionSpaceTarget:
    """``log TanhNormal(a; loc, scale) + w(a)``, ``-inf`` outside the open box."""

    def __init__(self, log_weight_fn, loc, scale):
        self.log_weight_fn, self.loc, self.scale = log_weight_fn, loc, scale

    def __call__(self, a: Tensor) -> Tensor:
        inside = (a.abs() < 1).all(-1)
        a_safe = torch.where(inside.unsqueeze(-1), a, torch.zeros_like(a))
        u = torch.atanh(a_safe)
        log_pi = (
            -0.5 * ((u - self.loc) / self.scale).pow(2)
            - self.scale.log()
            - 0.5 * math.log(2 * math.pi)
            - torch.log1p(-a_safe.pow(2))
        ).sum(-1)
        value = log_pi + _log_weight(self.log_weight_fn, a_safe)
        return torch.where(inside, value, torch.full_like(value, -torch.inf))


def _log_weight(log_weight_fn, action: Tensor) -> Tensor:
    # A [*batch, 1] output would silently broadcast against log pi [*batch].
    w = log_weight_fn(action)
    if not isinstance(w, Tensor) or w.shape != action.shape[:-1]:
        raise ValueError(
            f"log_weight_fn must map actions of shape {tuple(action.shape)} to "
            f"{tuple(action.shape[:-1])} (squeeze a trailing critic dimension), got "
            f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}."
        )
    return w


def _check_inputs(loc, scale, init_action, validate: bool):
    loc, scale, init_action = (
        t.detach() if isinstance(t, Tensor) else t for t in (loc, scale, init_action)
    )
    named = (("loc", loc), ("scale", scale), ("init_action", init_action))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor of shape [*batch, d].")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}.")
    if not (loc.shape == scale.shape == init_action.shape):
        raise ValueError(
            "loc, scale and init_action must share the shape [*batch, d]; got "
            f"{tuple(loc.shape)}, {tuple(scale.shape)}, {tuple(init_action.shape)}."
        )
    if not validate:
        return loc, scale, init_action
    for name, t in named:
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains non-finite values.")
    if not (scale > 0).all():
        raise ValueError("scale must be strictly positive.")
    if init_action.abs().max() > 1:
        raise ValueError(
            "init_action must lie in [-1, 1] (a tanh policy's action box); "
            f"got a maximum |a| of {init_action.abs().max().item():.4g}."
        )
    return loc, scale, init_action
