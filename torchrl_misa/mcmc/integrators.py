"""Leapfrog (velocity Verlet) integration of Hamiltonian dynamics.

An integrator has the signature of :func:`leapfrog`; any function with it can
be given to :func:`~torchrl_misa.mcmc.build_kernel`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Integrator = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]


def leapfrog(
    position: Tensor,
    momentum: Tensor,
    grad: Tensor,
    step_size: Tensor,
    num_steps: int,
    value_and_grad_fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    inverse_mass_matrix: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integrates ``num_steps`` leapfrog steps for all chains at once.

    The Hamiltonian is ``-log_prob(x) + p^T M^-1 p / 2``, so the position moves
    along the velocity ``M^-1 p``.

    Args:
        position, momentum, grad: ``[*batch, d]``; ``grad`` is that of the log
            density at ``position`` (the potential is ``-log_prob``).
        step_size: broadcastable to ``[*batch, d]``.
        num_steps: number of leapfrog steps (one gradient evaluation each).
        value_and_grad_fn: ``position -> (log_prob, grad)``.
        inverse_mass_matrix: the diagonal of ``M^-1``, broadcastable to
            ``[*batch, d]``; ``None`` for a unit mass.

    Returns:
        the new position, momentum, log density and gradient.

    Examples:
        >>> import torch
        >>> from functools import partial
        >>> from torchrl_misa.mcmc import leapfrog, value_and_grad
        >>> vg = partial(value_and_grad, lambda x: -0.5 * (x**2).sum(-1))
        >>> x, p = torch.zeros(4, 2), torch.ones(4, 2)
        >>> lp, g = vg(x)
        >>> x1, p1, lp1, g1 = leapfrog(x, p, g, torch.tensor(0.1), 10, vg)
        >>> h0, h1 = -lp + 0.5 * (p**2).sum(-1), -lp1 + 0.5 * (p1**2).sum(-1)
        >>> bool((h1 - h0).abs().max() < 1e-2)  # the energy is nearly conserved
        True
    """
    momentum = momentum + 0.5 * step_size * grad
    for i in range(num_steps):
        velocity = (
            momentum if inverse_mass_matrix is None else inverse_mass_matrix * momentum
        )
        position = position + step_size * velocity
        log_prob, grad = value_and_grad_fn(position)
        # Full momentum steps in between, half a step at the end.
        scale = 0.5 if i == num_steps - 1 else 1.0
        momentum = momentum + scale * step_size * grad
    return position, momentum, log_prob, grad
