"""One HMC transition: momentum refresh, leapfrog, Metropolis accept/reject."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor

from .integrators import leapfrog

# A proposal whose energy rises by more than this is reported as a divergence.
DIVERGENCE_THRESHOLD = 1000.0


def hmc_step(
    state: TensorDict,
    step_size: Tensor,
    num_leapfrog: int,
    value_and_grad_fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    momentum: Tensor,
    log_uniform: Tensor,
) -> tuple[TensorDict, TensorDict]:
    """Advances every chain of ``state`` by one HMC transition.

    The random draws come from the caller (``momentum ~ N(0, I)`` of shape
    ``[*batch, d]``, ``log_uniform = log U(0, 1)`` of shape ``[*batch]``) so
    that this function is pure and can be compiled.

    Returns:
        the new state and ``info`` with ``accept_prob`` (``min(1, exp(-dH))``,
        0 for non-finite proposals), ``accepted`` and ``divergent``, all ``[*batch]``.

    Examples:
        >>> import torch
        >>> from functools import partial
        >>> from torchrl_misa.mcmc import hmc_step, init_state, value_and_grad
        >>> vg = partial(value_and_grad, lambda x: -0.5 * (x**2).sum(-1))
        >>> state = init_state(torch.zeros(8, 2), vg)
        >>> momentum, log_u = torch.randn(8, 2), torch.rand(8).log()
        >>> state, info = hmc_step(state, torch.tensor(0.5), 2, vg, momentum, log_u)
        >>> sorted(state.keys()), sorted(info.keys())
        (['grad', 'log_prob', 'position'], ['accept_prob', 'accepted', 'divergent'])
    """
    position, log_prob, grad = state["position"], state["log_prob"], state["grad"]
    new_position, new_momentum, new_log_prob, new_grad = leapfrog(
        position, momentum, grad, step_size, num_leapfrog, value_and_grad_fn
    )
    energy = -log_prob + 0.5 * momentum.pow(2).sum(-1)
    new_energy = -new_log_prob + 0.5 * new_momentum.pow(2).sum(-1)
    delta = new_energy - energy
    finite = torch.isfinite(delta)
    log_accept = torch.where(finite, (-delta).clamp(max=0.0), -torch.inf)
    accepted = log_uniform < log_accept
    divergent = ~finite | (delta > DIVERGENCE_THRESHOLD)

    new_state = TensorDict(
        {
            "position": torch.where(accepted.unsqueeze(-1), new_position, position),
            "log_prob": torch.where(accepted, new_log_prob, log_prob),
            "grad": torch.where(accepted.unsqueeze(-1), new_grad, grad),
        },
        batch_size=state.batch_size,
    )
    info = TensorDict(
        {"accept_prob": log_accept.exp(), "accepted": accepted, "divergent": divergent},
        batch_size=state.batch_size,
    )
    return new_state, info
