"""The HMC transition kernel: momentum refresh, integration, Metropolis test.

As in BlackJAX, the kernel is built from its parts by :func:`build_kernel`
(the integrator and the divergence threshold); the mass matrix is an argument
of each step. The kernel is a pure function of its inputs: the random draws
come from the caller, so a step can be compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor

from .integrators import Integrator, leapfrog
from .state import ValueAndGradFn


class HMCKernel:
    """One HMC transition for every chain of a batched state.

    Build it with :func:`build_kernel`. Calling the kernel runs the transition
    eagerly; :attr:`compiled` is the same transition under ``torch.compile``,
    created on first use and kept on this kernel object.
    """

    def __init__(self, integrator: Integrator, divergence_threshold: float) -> None:
        if not callable(integrator):
            raise TypeError(f"integrator must be callable, got {integrator!r}.")
        if not divergence_threshold > 0:  # also rejects NaN
            raise ValueError(
                f"divergence_threshold must be positive, got {divergence_threshold}."
            )
        self.integrator = integrator
        self.divergence_threshold = float(divergence_threshold)
        self._compiled = None

    def __call__(
        self,
        state: TensorDict,
        step_size: Tensor,
        num_leapfrog: int,
        value_and_grad_fn: ValueAndGradFn,
        momentum: Tensor,
        log_uniform: Tensor,
        inverse_mass_matrix: Tensor | None = None,
    ) -> tuple[TensorDict, TensorDict]:
        """Advances every chain of ``state`` by one HMC transition.

        Args:
            state: ``{"position", "log_prob", "grad"}`` (see
                :func:`~torchrl_misa.mcmc.init_state`), batch size ``[*batch]``.
            step_size: broadcastable to ``[*batch, d]``.
            num_leapfrog: integration steps per transition.
            value_and_grad_fn: ``position -> (log_prob, grad)``, non-finite
                values already mapped to ``-inf`` / zeros.
            momentum: standard normal draws ``[*batch, d]``; the kernel scales
                them to ``N(0, M)``.
            log_uniform: ``log U(0, 1)`` draws ``[*batch]`` for the Metropolis test.
            inverse_mass_matrix: the diagonal of ``M^-1``, broadcastable to
                ``[*batch, d]`` and positive; ``None`` for a unit mass.

        Returns:
            the new state and ``info`` with ``accept_prob`` (``min(1, exp(-dH))``;
            0 for a non-finite proposal, 1 for a finite proposal from a state of
            zero density), ``accepted`` and ``divergent`` (the energy rose by
            more than the threshold, or the proposal is not finite), all ``[*batch]``.
        """
        position, log_prob, grad = state["position"], state["log_prob"], state["grad"]
        if inverse_mass_matrix is not None:  # N(0, I) draws to N(0, M)
            momentum = momentum / inverse_mass_matrix.sqrt()
        new_position, new_momentum, new_log_prob, new_grad = self.integrator(
            position,
            momentum,
            grad,
            step_size,
            num_leapfrog,
            value_and_grad_fn,
            inverse_mass_matrix,
        )
        energy = -log_prob + _kinetic_energy(momentum, inverse_mass_matrix)
        new_energy = -new_log_prob + _kinetic_energy(new_momentum, inverse_mass_matrix)
        delta = new_energy - energy
        # delta is +inf for a non-finite proposal (rejected), -inf for a finite
        # one from a state of zero density (accepted: the Metropolis ratio is
        # +inf), NaN when both are non-finite (rejected).
        defined = ~torch.isnan(delta)
        log_accept = torch.where(defined, (-delta).clamp(max=0.0), -torch.inf)
        accepted = log_uniform < log_accept
        divergent = ~defined | (delta > self.divergence_threshold)

        new_state = TensorDict(
            {
                "position": torch.where(accepted.unsqueeze(-1), new_position, position),
                "log_prob": torch.where(accepted, new_log_prob, log_prob),
                "grad": torch.where(accepted.unsqueeze(-1), new_grad, grad),
            },
            batch_size=state.batch_size,
        )
        info = TensorDict(
            {
                "accept_prob": log_accept.exp(),
                "accepted": accepted,
                "divergent": divergent,
            },
            batch_size=state.batch_size,
        )
        return new_state, info

    @property
    def compiled(self) -> Callable[..., tuple[TensorDict, TensorDict]]:
        """This kernel's transition under ``torch.compile(dynamic=False)``.

        Created once per kernel object. Dynamo guards on shapes, dtypes and the
        code of the functions passed in, not on their identity: a fresh closure
        over the same modules with same-shaped tensors (a new training batch)
        reuses the compiled graph; a new shape compiles a new one.
        """
        if self._compiled is None:
            self._compiled = torch.compile(self.__call__, dynamic=False)
        return self._compiled

    def __repr__(self) -> str:
        name = getattr(self.integrator, "__name__", repr(self.integrator))
        return (
            f"{type(self).__name__}(integrator={name}, "
            f"divergence_threshold={self.divergence_threshold})"
        )


def build_kernel(
    integrator: Integrator = leapfrog, divergence_threshold: float = 1000.0
) -> HMCKernel:
    """Builds an HMC transition kernel from its parts.

    Args:
        integrator: integrates Hamiltonian dynamics; same signature as
            :func:`~torchrl_misa.mcmc.leapfrog` (the default).
        divergence_threshold: an energy rise above this marks the transition
            as divergent (counted in the sampler's ``num_divergent``). Default
            1000, as BlackJAX and Stan.

    Returns:
        the kernel: ``kernel(state, step_size, num_leapfrog, value_and_grad_fn,
        momentum, log_uniform, inverse_mass_matrix=None) -> (state, info)``.

    Examples:
        >>> import torch
        >>> from functools import partial
        >>> from torchrl_misa.mcmc import build_kernel, init_state, value_and_grad
        >>> kernel = build_kernel(divergence_threshold=10.0)
        >>> vg = partial(value_and_grad, lambda x: -0.5 * (x**2).sum(-1))
        >>> state = init_state(torch.zeros(8, 2), vg)
        >>> momentum, log_u = torch.randn(8, 2), torch.rand(8).log()
        >>> state, info = kernel(state, torch.tensor(0.5), 2, vg, momentum, log_u)
        >>> sorted(state.keys()), sorted(info.keys())
        (['grad', 'log_prob', 'position'], ['accept_prob', 'accepted', 'divergent'])
    """
    return HMCKernel(integrator, divergence_threshold)


def _kinetic_energy(momentum: Tensor, inverse_mass_matrix: Tensor | None) -> Tensor:
    """``p^T M^-1 p / 2`` for a diagonal ``M^-1`` (``None``: unit mass)."""
    if inverse_mass_matrix is None:
        return 0.5 * momentum.pow(2).sum(-1)
    return 0.5 * (momentum.pow(2) * inverse_mass_matrix).sum(-1)


# The default kernel: the sampler uses it (and its compiled transition) unless
# given another one.
hmc_step = build_kernel()
