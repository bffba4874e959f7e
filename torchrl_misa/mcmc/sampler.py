"""``hmc_sample``: batched HMC chains with burn-in, step-size adaptation and thinning.

A thin loop over the parts: the kernel (:func:`~torchrl_misa.mcmc.build_kernel`),
the step-size adaptation (:func:`~torchrl_misa.mcmc.simple_step_size_adaptation`)
and the chains' diagnostics.
"""

from __future__ import annotations

import functools

import torch
from tensordict import TensorDict
from torch import Tensor

from .adaptation import simple_step_size_adaptation
from .checks import check_counts, check_step_size
from .diagnostics import check_chains, summarize_chains
from .kernel import hmc_step, HMCKernel
from .positions import Position, ravel_like, ravel_position
from .state import functional_value_and_grad, init_state, LogProbFn, value_and_grad


def hmc_sample(
    log_prob_fn: LogProbFn,
    init: Position,
    *,
    num_samples: int,
    num_burnin: int = 5,
    num_leapfrog: int = 2,
    step_size: float | Tensor = 1.0,
    num_adaptation_steps: int | None = None,
    target_accept: float = 0.75,
    adaptation_rate: float = 0.1,
    shared_step_size: bool = True,
    num_group_dims: int = 0,
    num_chains: int = 1,
    thin: int = 1,
    scale: Position | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
    kernel: HMCKernel | None = None,
    validate: bool = True,
) -> tuple[Position, TensorDict]:
    """Draws samples of an unnormalised density with Hamiltonian Monte Carlo.

    All chains (one or more per batch element) advance together as batched
    tensor operations; the only Python loop is over MCMC transitions.

    Args:
        log_prob_fn: ``position [*chain_batch, d] -> log density [*chain_batch]``,
            unnormalised, differentiable in the position. Leading dimensions
            are batch dimensions: with ``num_chains > 1`` it receives
            ``[num_chains, *batch, d]``. Non-finite values reject the proposal
            (counted as divergences). Gradients are taken w.r.t. the position
            only: parameters inside never receive ``.grad``. With a TensorDict
            ``init`` it receives a TensorDict of the same entries, batch size
            ``chain_batch``.
        init: initial position: a tensor ``[*batch, d]``, or a TensorDict with
            batch size ``batch`` whose entries ``[*batch, *event]`` together
            form the position (they must share a floating dtype).

    Keyword Args:
        num_samples: samples kept per batch element, all chains together
            (must be divisible by ``num_chains``).
        num_burnin: transitions discarded before keeping samples. Default 5.
        num_leapfrog: leapfrog steps per transition. Default 2.
        step_size: initial leapfrog step size: a float, or a tensor broadcastable
            to ``batch`` (one per batch element, shared by its chains). Default 1.0.
        num_adaptation_steps: burn-in transitions during which the step size
            is adapted. Defaults to ``num_burnin - 1`` (4 of 5, as TFP's
            ``int(0.8 * num_burnin)``); at most ``num_burnin``.
        target_accept: acceptance probability the adaptation aims at, in
            ``(0, 1)``. Default 0.75.
        adaptation_rate: after each adaptation step the step size is
            multiplied by ``1 + rate`` where the acceptance probability exceeded
            ``target_accept`` and divided by ``1 + rate`` elsewhere (TFP's
            ``SimpleStepSizeAdaptation`` rule); in ``(0, 1)``. Default 0.1.
        shared_step_size: one step size for the whole batch, adapted on the
            mean acceptance (TFP's behaviour with a scalar step size). Default
            ``True``. ``False`` adapts one step size per chain on that chain's
            own acceptance; since the acceptance depends on where the chain
            is, per-chain adaptation correlates step size and position and
            biases short chains (measured: the variance of a Gaussian target
            came out 9% too large after 30 burn-in steps, against 0.4% shared),
            so use it only with long chains or well-separated scales.
        num_group_dims: with ``shared_step_size``, the number of leading batch
            dimensions that index independent problems (e.g. agents trained
            side by side): each index gets its own step size, adapted on the
            mean acceptance of its own chains, as if it were sampled alone.
            A tensor ``step_size`` then broadcasts to ``batch[:num_group_dims]``.
            Default 0 (one step size for the whole batch).
        num_chains: independent chains per batch element. Default 1.
        thin: keep every ``thin``-th transition after burn-in. Default 1.
        scale: diagonal preconditioner (positive), shaped as ``init`` (a
            TensorDict for a TensorDict ``init``): chains move in
            ``z = position / scale``, i.e. HMC with the mass matrix
            ``diag(scale ** -2)``.
        generator: random generator for momenta and accept draws.
        compile: run each transition through the kernel's ``torch.compile``
            version (:attr:`~torchrl_misa.mcmc.HMCKernel.compiled`), gradients via
            ``torch.func.grad_and_value``. The first call compiles (tens of
            seconds); later calls with the same shapes, even with a new closure
            over the same modules, reuse the compiled graph.
        kernel: the transition kernel, from :func:`~torchrl_misa.mcmc.build_kernel`
            (another integrator or divergence threshold). Default: the
            module's :data:`~torchrl_misa.mcmc.hmc_step` (leapfrog, threshold 1000).
        validate: check values, at the cost of host syncs: ``init``, a tensor
            ``step_size`` and ``scale`` finite (and positive); after sampling,
            raise if a chain never left a point of non-finite density, and warn
            if no chain moved after burn-in or the step size adapted to zero
            or infinity. Shapes, dtypes, counts and Python numbers are always
            checked. Default ``True``.

    Returns:
        ``samples [num_samples, *batch, d]`` (detached; chains concatenated along
        dim 0, each in chain order; a TensorDict of batch size
        ``[num_samples, *batch]`` for a TensorDict ``init``) and an info
        TensorDict with batch size ``batch``: ``acceptance_rate`` (fraction of
        accepted transitions after burn-in), ``burnin_acceptance_rate``,
        ``step_size`` (final, averaged over the chains of a batch element),
        ``num_divergent``, ``num_stuck_chains`` (chains whose samples all repeat
        their position at the end of burn-in) and ``num_nonfinite_chains``
        (chains with a sample where ``log_prob_fn`` or its gradient is not
        finite: a start they had not left).

    Examples:
        >>> import torch
        >>> from torchrl_misa.mcmc import hmc_sample
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> log_prob = lambda x: -0.5 * (x**2).sum(-1)  # standard normal
        >>> samples, info = hmc_sample(log_prob, torch.zeros(1000, 2), num_samples=20, num_burnin=20)
        >>> samples.shape
        torch.Size([20, 1000, 2])
        >>> bool((samples.var((0, 1)) - 1).abs().max() < 0.1)
        True
        >>> bool(info["acceptance_rate"].mean() > 0.6)
        True
    """
    num_adaptation_steps = check_counts(
        num_samples=num_samples,
        num_burnin=num_burnin,
        num_leapfrog=num_leapfrog,
        num_chains=num_chains,
        thin=thin,
        num_adaptation_steps=num_adaptation_steps,
    )
    adaptation = simple_step_size_adaptation(target_accept, adaptation_rate)
    kernel = hmc_step if kernel is None else kernel
    if not isinstance(kernel, HMCKernel):
        raise TypeError(
            f"kernel must be built by build_kernel(...), got {type(kernel).__name__}."
        )
    position, unravel = ravel_position(init)
    position = _check_finite(position.detach(), validate)
    batch, d = position.shape[:-1], position.shape[-1]
    if not (
        isinstance(num_group_dims, int) and 0 <= num_group_dims <= len(batch)
    ) or isinstance(num_group_dims, bool):
        raise ValueError(
            f"num_group_dims must be an integer in [0, {len(batch)}] (the batch "
            f"dimensions of init), got {num_group_dims!r}."
        )
    groups = batch[:num_group_dims] if shared_step_size else None
    target_fn = log_prob_fn
    if not isinstance(init, Tensor):
        target_fn = functools.partial(_unraveled_log_prob, log_prob_fn, unravel)
    if scale is not None:
        scale = _check_scale(ravel_like(scale, "scale", init), position, validate)
        # a copy, not a view: a scan may not take two inputs that alias (the
        # target may hold the same tensor)
        scale = scale.clone()
        target_fn = functools.partial(_scaled_log_prob, target_fn, scale)
        position = position / scale
    if num_chains > 1:
        position = position.expand(num_chains, *position.shape)
    chain_batch = position.shape[:-1]

    traced = torch.compiler.is_compiling()
    if traced:
        # Inside an outer torch.compile: the whole chain becomes one scan in the
        # caller's graph, its gradients taken by torch.func.
        vg_fn = functional_value_and_grad(target_fn)
        step_fn = kernel
        state = init_state(position.contiguous(), vg_fn)
    else:
        # The first evaluation is eager: it checks that log_prob_fn depends on
        # the position, which torch.func cannot tell from a zero gradient.
        state = init_state(
            position.contiguous(), functools.partial(value_and_grad, target_fn)
        )
        if compile:
            vg_fn = functional_value_and_grad(target_fn)
            step_fn = kernel.compiled
        else:
            vg_fn = functools.partial(value_and_grad, target_fn)
            step_fn = kernel
    step_state = adaptation.init(
        _initial_step_size(step_size, groups, batch, chain_batch, position, validate)
    )
    transition = functools.partial(
        _transition,
        step_fn,
        vg_fn,
        adaptation,
        num_leapfrog,
        (
            functools.partial(
                _group_mean, batch_dims=len(batch), group_dims=len(groups)
            )
            if groups
            else None
        ),
    )
    per_chain = num_samples // num_chains
    num_transitions = num_burnin + per_chain * thin
    carry = (
        (state["position"], state["log_prob"], state["grad"]),
        step_state,
        position.new_zeros(chain_batch),  # accepted during burn-in
        position.new_zeros(chain_batch),  # accepted after burn-in
        position.new_zeros(chain_batch, dtype=torch.long),  # divergent
        position.new_zeros(chain_batch, dtype=torch.bool),  # non-finite, kept
    )
    draws = [_draws(position, generator) for _ in range(num_transitions)]
    if traced:
        carry, positions = _scan_chain(
            transition, carry, draws, num_burnin, num_adaptation_steps, thin
        )
    else:
        positions = []
        for t, draw in enumerate(draws):
            burn_in = t < num_burnin
            adapt, keep = t < num_adaptation_steps, _kept(t, num_burnin, thin)
            flags = (burn_in, not burn_in, adapt, keep)
            carry, new_position = transition(carry, (*draw, *flags))
            positions.append(new_position)
        positions = torch.stack(positions)  # [num_transitions, *chain_batch, d]
    _, step_state, accepted_burnin, accepted_kept, divergent, nonfinite = carry
    step = adaptation.final(step_state)

    chain_samples = positions[num_burnin + thin - 1 :: thin]  # [per_chain, ...]
    burnin_end = positions[num_burnin - 1] if num_burnin else state["position"]
    stuck = (chain_samples == burnin_end).all(-1).all(0)
    if validate and not traced:
        check_chains(
            stuck=stuck,
            nonfinite=nonfinite,
            step_size=step,
            num_kept_transitions=per_chain * thin,
        )
    samples = chain_samples
    if num_chains > 1:
        samples = samples.transpose(0, 1).reshape(num_samples, *batch, d)
    if scale is not None:
        samples = samples * scale
    info = summarize_chains(
        accepted_kept=accepted_kept,
        accepted_burnin=accepted_burnin,
        divergent=divergent,
        stuck=stuck,
        nonfinite=nonfinite,
        step_size=step,
        num_kept_transitions=per_chain * thin,
        num_burnin=num_burnin,
        chain_dims=(0,) if num_chains > 1 else (),
        batch=batch,
    )
    return unravel(samples.detach()), info


def _kept(t: int, num_burnin: int, thin: int) -> bool:
    """Whether transition ``t`` gives a sample: after burn-in, every ``thin``-th."""
    return t >= num_burnin and (t - num_burnin) % thin == thin - 1


def _transition(
    step_fn, vg_fn, adaptation, num_leapfrog, group_mean, carry: tuple, x: tuple
) -> tuple[tuple, Tensor]:
    """One transition and its bookkeeping: ``(carry, x) -> (carry, new position)``.

    ``x`` holds the transition's draws and four flags (burn-in, after burn-in,
    adapting, kept), Python bools in the eager loop or 0-d tensors in a scan: the same
    body runs both ways.
    """
    (position, log_prob, grad), step, acc_burnin, acc_kept, divergent, nonfinite = carry
    momentum, log_u, burn_in, sampling, adapt, keep = x
    state = TensorDict(
        {"position": position, "log_prob": log_prob, "grad": grad},
        batch_size=log_prob.shape,
    )
    # Gradients w.r.t. the position are taken inside (enable_grad or
    # torch.func); a fixed grad mode outside keeps the caller's mode out of
    # a compiled transition's guards, so it is not compiled twice.
    with torch.no_grad():
        state, info = step_fn(
            state, adaptation.final(step), num_leapfrog, vg_fn, momentum, log_u
        )
    accepted = info["accepted"].to(acc_kept.dtype)
    accept_prob = info["accept_prob"]
    if group_mean is not None:  # each group adapts on its own chains' mean
        accept_prob = group_mean(accept_prob)
    new_log_prob = state["log_prob"]
    carry = (
        (state["position"], new_log_prob, state["grad"]),
        _update_if(adapt, step, lambda: adaptation.update(step, accept_prob)),
        _update_if(burn_in, acc_burnin, lambda: acc_burnin + accepted),
        _update_if(sampling, acc_kept, lambda: acc_kept + accepted),
        divergent + info["divergent"],
        _update_if(keep, nonfinite, lambda: nonfinite | ~torch.isfinite(new_log_prob)),
    )
    return carry, state["position"]


def _update_if(flag, old, new_fn):
    """``new_fn()`` where ``flag`` holds, else ``old``: a Python branch or a ``where``."""
    if isinstance(flag, bool):
        return new_fn() if flag else old
    return torch.where(flag, new_fn(), old)


def _scan_chain(transition, carry, draws, num_burnin, num_adaptation_steps, thin):
    """The chain as one ``scan`` over its transitions (inside ``torch.compile``).

    Traced once whatever the number of transitions, where an unrolled loop
    would trace every transition. The flags are made on the device from an
    ``arange``: no tensor from host data.
    """
    from torch._higher_order_ops.scan import scan

    momenta = torch.stack([m for m, _ in draws])
    log_us = torch.stack([u for _, u in draws])
    t = torch.arange(len(draws), device=momenta.device)
    after = t - num_burnin
    kept = (after >= 0) & (after.remainder(thin) == thin - 1)
    burn_in = t < num_burnin
    xs = (momenta, log_us, burn_in, ~burn_in, t < num_adaptation_steps, kept)

    def body(carry, x):
        carry, position = transition(carry, x)
        return carry, position.clone()  # a scan output may not alias the carry

    return scan(body, carry, xs)


def _draws(position: Tensor, generator) -> tuple[Tensor, Tensor]:
    """One transition's draws: standard normal momenta and ``log U(0, 1)`` per chain."""
    kwargs = {
        "generator": generator,
        "dtype": position.dtype,
        "device": position.device,
    }
    momentum = torch.randn(position.shape, **kwargs)
    log_u = torch.rand(position.shape[:-1], **kwargs).log()
    return momentum, log_u


def _group_mean(accept_prob: Tensor, batch_dims: int, group_dims: int) -> Tensor:
    """``accept_prob [*chains, *batch]`` averaged over all but the groups' dimensions.

    Returns ``[*groups, 1, ..., 1]`` (``batch_dims`` dimensions): the shape of
    the groups' step sizes without their last dimension.
    """
    chains = accept_prob.ndim - batch_dims
    if chains:
        accept_prob = accept_prob.mean(tuple(range(chains)))
    rest = tuple(range(group_dims, batch_dims))
    return accept_prob.mean(rest, keepdim=True) if rest else accept_prob


def _unraveled_log_prob(log_prob_fn, unravel, flat: Tensor) -> Tensor:
    return log_prob_fn(unravel(flat))


def _scaled_log_prob(log_prob_fn, scale: Tensor, z: Tensor) -> Tensor:
    return log_prob_fn(z * scale)


def _initial_step_size(
    step_size, groups, batch, chain_batch, like: Tensor, validate: bool
) -> Tensor:
    """The step sizes the adaptation starts from.

    ``groups`` is ``None`` for one step size per chain (``[*chain_batch, 1]``),
    else the shape of the group dimensions: ``[*groups, 1, ..., 1]`` (one
    dimension per batch dimension and one for the position), a 0-d tensor
    when there are no groups.
    """
    if isinstance(step_size, Tensor):  # its values cost a host sync
        if validate and not bool((torch.isfinite(step_size) & (step_size > 0)).all()):
            raise ValueError(f"step_size must be finite and positive, got {step_size}.")
        step = step_size.detach().to(dtype=like.dtype, device=like.device)
    else:  # filled on the device: no copy from the host (CUDA-graph capture)
        check_step_size(step_size)
        step = like.new_full((), float(step_size))
    if groups is not None and not groups:
        if step.numel() != 1:
            raise ValueError(
                "shared_step_size=True needs a scalar step_size, got shape "
                f"{tuple(step.shape)}; pass shared_step_size=False for one step "
                "size per batch element, or num_group_dims for one per group."
            )
        return step.reshape(())
    target = batch if groups is None else groups
    if step.ndim > len(target):
        raise ValueError(
            f"step_size must be a scalar or broadcast to the shape {tuple(target)}, "
            f"got shape {tuple(step.shape)}."
        )
    try:
        step = step.expand(target)
    except RuntimeError:
        raise ValueError(
            f"step_size of shape {tuple(step.shape)} does not broadcast to the shape "
            f"{tuple(target)}."
        ) from None
    if groups is None:
        return step.expand(chain_batch).unsqueeze(-1).clone()
    ones = (1,) * (len(batch) - len(groups) + 1)
    return step.reshape(*groups, *ones).clone()


def _check_finite(position: Tensor, validate: bool) -> Tensor:
    if validate and not torch.isfinite(position).all():
        raise ValueError(
            "init contains non-finite values: chains must start at finite positions."
        )
    return position


def _check_scale(scale: Tensor, position: Tensor, validate: bool) -> Tensor:
    scale = torch.as_tensor(scale, dtype=position.dtype, device=position.device)
    try:
        scale = scale.expand_as(position)
    except RuntimeError:
        raise ValueError(
            f"scale of shape {tuple(scale.shape)} does not broadcast to the position's "
            f"shape {tuple(position.shape)}."
        ) from None
    if validate and not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be finite and strictly positive.")
    return scale
